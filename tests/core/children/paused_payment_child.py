"""A payment step whose body waits for the test's go-ahead: the test SIGSTOPs this process inside
the body, lets its lease lapse, decides the step, then lets it finish.

argv: redis_url prefix run_id workdir
The body writes workdir/started, waits for workdir/go, appends 'paid' to workdir/effects and
returns {"paid": 30}. Prints {"result": ...} or {"error": type, "message": ...} as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

import agentledger
from agentledger import Ledger

url, prefix, run_id, workdir = sys.argv[1:5]


@agentledger.step(in_doubt="fail")
def pay(amount: int) -> dict[str, int]:
    with open(os.path.join(workdir, "started"), "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(os.path.join(workdir, "go")):
        time.sleep(0.01)
    with open(os.path.join(workdir, "effects"), "a") as f:
        f.write("paid\n")
    return {"paid": amount}


ledger = Ledger.from_url(url, prefix=prefix, lease_ms=int(os.environ.get("LEASE_MS", "600")))
try:
    with ledger.run(run_id):
        result = pay(30)
except agentledger.LedgerError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    sys.exit(3)
print(json.dumps({"result": result}))
