"""A Redis restarted mid-run with its append-only file loses nothing; a Redis that stays
away makes the run fail closed before any unrecorded step runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _support import OFFLINE_ENV, REPO, RedisServer
from agentledger import Ledger

CHILD = REPO / "tests" / "core" / "children" / "pipeline_child.py"


def spawn(url: str, fx: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), url, "t", "r", "sync", str(fx)],
                            env={**os.environ, **OFFLINE_ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO))


def wait_for_effects(fx: Path, n: int) -> None:
    deadline = time.monotonic() + 30
    while not fx.exists() or len(fx.read_text().splitlines()) < n:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_redis_killed_and_restarted_mid_run_loses_nothing(own_redis: RedisServer,
                                                          tmp_path: Path) -> None:
    fx = tmp_path / "effects.jsonl"
    child = spawn(own_redis.url, fx, STEP_SLEEP="0.4")
    wait_for_effects(fx, 2)
    own_redis.restart(down_s=0.5)  # SIGKILL: only what reached the fsynced AOF survives
    out = child.communicate(timeout=90)
    assert child.returncode == 0, out
    assert json.loads(out[0].splitlines()[-1]) == {"result": 21}
    steps = Counter(json.loads(x)["step"] for x in fx.read_text().splitlines())
    assert set(steps) == {"s1", "s2", "s3", "s4", "s5"}
    assert steps["s1"] == 1  # recorded before the restart, never run again
    assert sum(steps.values()) <= 6  # at most the step in flight during the outage ran twice
    ledger = Ledger.from_url(own_redis.url, prefix="t")
    assert [r.status for r in ledger.steps("r")] == ["completed"] * 5
    ledger.close()
    # Restart once more: every record comes back from the append-only file.
    own_redis.restart()
    ledger = Ledger.from_url(own_redis.url, prefix="t")
    assert len(ledger.steps("r")) == 5
    rerun = spawn(own_redis.url, fx)
    assert rerun.wait(60) == 0
    assert sum(Counter(json.loads(x)["step"] for x in fx.read_text().splitlines()).values()) == sum(steps.values())
    ledger.close()


def test_redis_gone_for_good_fails_closed(own_redis: RedisServer, tmp_path: Path) -> None:
    fx = tmp_path / "effects.jsonl"
    child = spawn(own_redis.url, fx, STEP_SLEEP="0.3")
    wait_for_effects(fx, 2)
    own_redis.kill()
    out = child.communicate(timeout=120)
    assert child.returncode == 3, out
    assert json.loads(out[0].splitlines()[-1])["error"] == "LedgerUnavailableError"
    steps = Counter(json.loads(x)["step"] for x in fx.read_text().splitlines())
    # No step body ran after Redis went away, beyond the one already in flight.
    assert sum(steps.values()) <= 3 and set(steps) <= {"s1", "s2", "s3"}
