"""An App whose pipeline is the test crew with ``DurableCrewHandler(run_id=run.run_id)``
attached: the kickoff records into the run the worker holds (no second lease) and leaves
finishing it to the worker.

Run by ``python -m agentledger worker crew_worker_app:app``; env AL_URL, AL_PREFIX,
CREW_EFFECTS (and CREW_KILL_AFTER_EMAIL, see crew_fakes.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crew_fakes import build_crew

from agentledger import App, Ledger, RunSession
from agentledger.crewai import DurableCrewHandler


def build(ledger: Ledger) -> App:
    app = App(ledger, max_retries=0)

    @app.pipeline("launch")
    def launch(human_input: bool, run: RunSession) -> str:
        crew = build_crew(human_input=human_input)
        DurableCrewHandler(run_id=run.run_id).attach(crew)
        return str(crew.kickoff(inputs={"topic": "launch"}).raw)

    return app


if os.environ.get("AL_URL"):
    app = build(Ledger.from_url(os.environ["AL_URL"], prefix=os.environ["AL_PREFIX"],
                                lease_ms=2000))
