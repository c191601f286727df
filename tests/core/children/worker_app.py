"""An App whose pipelines log each step's side effect to a file: the worker tests' subject.

Run by ``python -m agentledger worker worker_app:app`` (tests/core/children on PYTHONPATH).
env: AL_URL, AL_PREFIX, AL_EFFECTS (the effects file), AL_LEASE_MS, AL_RETRIES,
     STEP_SLEEP (seconds each step body sleeps after its effect),
     FAIL_FLAG (a file: while it exists, the 'flaky' pipeline's check step fails),
     AL_REPLICAS, AL_REPLICA_TIMEOUT_MS (durability "replicated"),
     AL_LOG_ACKED (set: the 'steps' pipeline logs each step once its call returned, i.e. its
     record was acknowledged: phase "acked").
Each effect line: {"run", "step", "key" (idempotency key), "pid", "t0", "t1"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import agentledger
from agentledger import App, Ledger, RunSession


def _effect(name: str) -> None:
    t0 = time.time()
    line: dict[str, Any] = {"run": agentledger.current_run().run_id,  # type: ignore[union-attr]
                            "step": name, "key": agentledger.current_idempotency_key(),
                            "pid": os.getpid(), "t0": t0}
    path = os.environ["AL_EFFECTS"]
    with open(path, "a") as f:  # the effect happens here, before the sleep
        f.write(json.dumps({**line, "phase": "start"}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    time.sleep(float(os.environ.get("STEP_SLEEP", "0")))
    with open(path, "a") as f:
        f.write(json.dumps({**line, "phase": "end", "t1": time.time()}) + "\n")


def _acked(name: str) -> None:
    if not os.environ.get("AL_LOG_ACKED"):
        return
    line = {"run": agentledger.current_run().run_id,  # type: ignore[union-attr]
            "step": name, "phase": "acked", "pid": os.getpid(), "t1": time.time()}
    with open(os.environ["AL_EFFECTS"], "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


@agentledger.step
def work(name: str, n: int) -> int:
    _effect(name)
    return n + 1


@agentledger.step
async def awork(name: str, n: int) -> int:
    await asyncio.to_thread(_effect, name)
    return n + 1


@agentledger.step
def check(name: str) -> None:
    _effect(name)
    flag = os.environ.get("FAIL_FLAG", "")
    if flag and os.path.exists(flag):
        raise RuntimeError("the flag is up")


def build(ledger: Ledger) -> App:
    app = App(ledger, max_retries=int(os.environ.get("AL_RETRIES", "2")), backoff_s=0.2)

    @app.pipeline("steps")
    def steps(input: dict[str, int], run: RunSession) -> dict[str, Any]:
        n = input["start"]
        for i in range(input.get("count", 5)):
            n = work(f"s{i + 1}", n)
            _acked(f"s{i + 1}")
        return {"total": n, "run": run.run_id}

    @app.pipeline("asteps")
    async def asteps(input: dict[str, int], run: RunSession) -> dict[str, Any]:
        n = input["start"]
        for i in range(input.get("count", 5)):
            n = await awork(f"s{i + 1}", n)
        return {"total": n, "run": run.run_id}

    @app.pipeline("approve")
    def approve(input: dict[str, int], run: RunSession) -> dict[str, Any]:
        work("before", 0)
        decision = agentledger.approval("ship", {"amount": input["amount"]})
        if not decision.approved:
            return {"shipped": False}
        work("after", 1)
        return {"shipped": True, "by": decision.by}

    @app.pipeline("flaky")
    def flaky(input: None, run: RunSession) -> str:
        work("first", 0)
        check("check")
        return "ok"

    return app


if os.environ.get("AL_URL"):
    app = build(Ledger.from_url(os.environ["AL_URL"], prefix=os.environ["AL_PREFIX"],
                                lease_ms=int(os.environ.get("AL_LEASE_MS", "3000")),
                                replicas=int(os.environ.get("AL_REPLICAS", "0")),
                                durability=os.environ.get("AL_DURABILITY", "sync"),
                                replica_timeout_ms=int(os.environ.get("AL_REPLICA_TIMEOUT_MS",
                                                                      "1000"))))
