"""A five-step pipeline run as a child process by the crash tests.

argv: redis_url prefix run_id mode(sync|async) effects_file
env:  DURABILITY (the ledger's level, default sync), AGENTLEDGER_CRASH_AT (a named boundary), KILL_IN_BODY=n (SIGKILL inside the n-th step's
      body, after its side effect), POLICY (in-doubt policy of the steps), STEP_SLEEP (seconds)
Each step's body appends {"step", "key", "pid"} to the effects file: the side effect we count.
Prints the final result as JSON on its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import agentledger
from agentledger import Ledger

url, prefix, run_id, mode, effects = sys.argv[1:6]
policy = os.environ.get("POLICY", "rerun")
kill_in_body = int(os.environ.get("KILL_IN_BODY", "0"))
sleep_s = float(os.environ.get("STEP_SLEEP", "0"))
counter = {"n": 0}


def effect(name: str, value: int) -> int:
    counter["n"] += 1
    with open(effects, "a") as f:
        f.write(json.dumps({"step": name, "key": agentledger.current_idempotency_key(),
                            "pid": os.getpid()}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if counter["n"] == kill_in_body:
        os.kill(os.getpid(), signal.SIGKILL)
    if sleep_s:
        time.sleep(sleep_s)
    return value


@agentledger.step(in_doubt=policy)
def add(name: str, a: int, b: int) -> int:
    return effect(name, a + b)


@agentledger.step(in_doubt=policy)
async def amul(name: str, a: int, b: int) -> int:
    await asyncio.sleep(0)
    return effect(name, a * b)


def run_sync(ledger: Ledger) -> int:
    with ledger.run(run_id):
        x = add("s1", 1, 2)
        y = add("s2", x, 3)
        z = add("s3", y, 4)
        w = add("s4", z, 5)
        return add("s5", w, 6)


async def run_async(ledger: Ledger) -> int:
    async with ledger.arun(run_id):
        x = await amul("s1", 1, 2)
        y = await amul("s2", x, 3)
        z = await amul("s3", y, 4)
        w = await amul("s4", z, 5)
        return await amul("s5", w, 6)


ledger = Ledger.from_url(url, prefix=prefix, lease_ms=int(os.environ.get("LEASE_MS", "3000")),
                         durability=os.environ.get("DURABILITY", "sync"))
try:
    result = run_sync(ledger) if mode == "sync" else asyncio.run(run_async(ledger))
except agentledger.LedgerError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    sys.exit(3)
print(json.dumps({"result": result}))
