"""Issue 8 item 5: a decision on an in-doubt step fences out the executor that was still alive
(paused past its lease), and the outcome it records afterwards is kept beside the decision as a
conflict, shown by `agentledger show`, the console and its JSON API."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agentledger
from _support import OFFLINE_ENV, REPO
from agentledger import Ledger, LedgerError, StepRejected
from agentledger._cli import main as cli

CHILD = REPO / "tests" / "core" / "children" / "paused_payment_child.py"


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("approved", [False, True])
def test_a_decision_fences_out_the_paused_executor_and_keeps_its_late_outcome(
        ledger: Ledger, redis_url: str, prefix: str, tmp_path: Path, approved: bool) -> None:
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO / "tests")}
    child = subprocess.Popen([sys.executable, str(CHILD), redis_url, prefix, "r", str(tmp_path)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), "the payment body to start")
        os.kill(child.pid, signal.SIGSTOP)  # paused inside the body; its lease lapses
        (running,) = ledger.steps("r")
        assert running.status == "running"

        def decided() -> bool:
            try:
                # Reject (nothing was sent), or approve: run it again.
                ledger.decide("r", running.key, approved=approved, by="ops", note="no payment seen")
                return True
            except LedgerError as e:
                assert "running, not waiting" in str(e)  # the lease is still live
                return False

        wait_for(decided, "the lease to lapse and the decision to be accepted")
        (tmp_path / "go").write_text("")
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()

    assert child.returncode == 3, out + err
    reply = json.loads(out.strip().splitlines()[-1])
    assert reply["error"] == "FencedOutError" and "conflict" in reply["message"], reply
    assert (tmp_path / "effects").read_text() == "paid\n"  # the payment was sent once

    (step,) = ledger.steps("r")
    assert step.status == ("failed" if not approved else "retry")
    assert step.conflict is not None
    conflict = json.loads(step.conflict)
    assert conflict["status"] == "completed"
    assert conflict["outcome"]["value"] == {"paid": 30}
    assert "completed" in step.conflict_text() and '{"paid": 30}' in step.conflict_text()

    # Shown by the CLI, the console's JSON API and pages.
    out_buf = io.StringIO()
    assert cli(["--url", redis_url, "--prefix", prefix, "show", "r"], out_buf) == 0
    assert "CONFLICT" in out_buf.getvalue() and '{"paid": 30}' in out_buf.getvalue()
    json_buf = io.StringIO()
    assert cli(["--url", redis_url, "--prefix", prefix, "--json", "show", "r"], json_buf) == 0
    assert json.loads(json.loads(json_buf.getvalue())["steps"][0]["conflict"])["outcome"] == \
        {"v": 1, "ok": True, "value": {"paid": 30}}
    from _console import Console, http

    with Console(ledger) as console:
        api = json.loads(http(f"{console.url}/api/run?id=r")[1])
        assert api["steps"][0]["conflict"]["outcome"]["value"] == {"paid": 30}
        page = http(f"{console.url}/run?id=r")[1]
        assert "conflict" in page and "{&#34;paid&#34;: 30}" in page

    # A restart follows the decision; the conflict stays on record beside it.
    @agentledger.step(name="pay", in_doubt="fail")
    def pay(amount: int) -> dict[str, int]:
        return {"paid": amount, "again": 1}

    if approved:
        with ledger.run("r"):
            assert pay(30) == {"paid": 30, "again": 1}
    else:
        with pytest.raises(StepRejected), ledger.run("r"):
            pay(30)
    (step,) = ledger.steps("r")
    assert step.conflict is not None
