"""One kickoff of the test crew as its own process (tests/crewai/test_crew_in_doubt.py).

Usage: crew_child.py URL PREFIX RUN_ID [IN_DOUBT_POLICY]
Prints one JSON line: the output, or the error's type and message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crew_fakes import build_crew

from agentledger import Ledger, LedgerError
from agentledger.crewai import DurableCrewHandler


def main() -> None:
    url, prefix, run_id = sys.argv[1:4]
    in_doubt = {"send_email": sys.argv[4]} if len(sys.argv) > 4 else None
    ledger = Ledger.from_url(url, prefix=prefix, lease_ms=2000)
    crew = build_crew()
    DurableCrewHandler(run_id, ledger=ledger, in_doubt=in_doubt).attach(crew)
    try:
        out = crew.kickoff(inputs={"topic": "launch"})
        print(json.dumps({"raw": out.raw}))
    except LedgerError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))


if __name__ == "__main__":
    main()
