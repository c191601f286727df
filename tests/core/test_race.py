"""Guarantee 4 with real processes: one live executor per run; a fenced-out one cannot write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _support import OFFLINE_ENV, REPO
from agentledger import Ledger

CHILD = REPO / "tests" / "core" / "children" / "pipeline_child.py"


def spawn(redis_url: str, prefix: str, fx: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), redis_url, prefix, "r", "sync", str(fx)],
        env={**os.environ, **OFFLINE_ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=str(REPO))


def test_two_processes_racing_on_one_run_execute_each_step_once(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    fx = tmp_path / "effects.jsonl"
    a = spawn(redis_url, prefix, fx, STEP_SLEEP="0.1")
    b = spawn(redis_url, prefix, fx, STEP_SLEEP="0.1")
    outs = [p.communicate(timeout=60) for p in (a, b)]
    assert [p.returncode for p in (a, b)] == [0, 0], outs
    assert [json.loads(o[0].splitlines()[-1]) for o in outs] == [{"result": 21}] * 2
    steps = Counter(json.loads(x)["step"] for x in fx.read_text().splitlines())
    assert steps == {"s1": 1, "s2": 1, "s3": 1, "s4": 1, "s5": 1}
    assert len({json.loads(x)["pid"] for x in fx.read_text().splitlines()}) == 1


def test_a_frozen_process_is_fenced_out_when_it_wakes(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    fx = tmp_path / "effects.jsonl"
    a = spawn(redis_url, prefix, fx, STEP_SLEEP="1.0", LEASE_MS="400")
    deadline = time.monotonic() + 20
    while not fx.exists() or not fx.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(a.pid, signal.SIGSTOP)  # frozen inside step 1's body, after its side effect
    try:
        b = spawn(redis_url, prefix, fx, LEASE_MS="400")
        out_b = b.communicate(timeout=60)
        assert b.returncode == 0, out_b
        assert json.loads(out_b[0].splitlines()[-1]) == {"result": 21}
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out_a = a.communicate(timeout=60)
    assert a.returncode == 3, out_a
    assert json.loads(out_a[0].splitlines()[-1])["error"] == "FencedOutError"
    steps = Counter(json.loads(x)["step"] for x in fx.read_text().splitlines())
    # s1's body ran in both (the frozen one never recorded it: in doubt, re-run), the rest once.
    assert steps == {"s1": 2, "s2": 1, "s3": 1, "s4": 1, "s5": 1}
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    recs = ledger.steps("r")
    assert [r.status for r in recs] == ["completed"] * 5
    assert recs[0].attempts == 2 and len({r.fence for r in recs}) == 1  # all written by b
    run = ledger.get_run("r")
    assert run is not None and run.status == "completed"  # a's late finish was refused
    ledger.close()
