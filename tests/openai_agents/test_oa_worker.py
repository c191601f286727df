"""DurableRunner as the body of an App pipeline, run by real worker processes: the runner
joins the worker's run instead of opening it again. A worker SIGKILLed inside a tool call is
replaced by another that finishes the run with every effect once (the one in flight twice,
under the same idempotency key); an approval decided through the CLI is continued by a worker
with no other action."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import OFFLINE_ENV, REPO, start_worker, stop_processes
from agentledger import App, Ledger, RunStatus

CHILDREN = REPO / "tests" / "openai_agents" / "children"
sys.path.insert(0, str(CHILDREN))
from oa_worker_app import build  # noqa: E402
from oa_world import read_effects  # noqa: E402


def worker(env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    return start_worker("oa_worker_app:app", env, log, concurrency=2, **extra)


@pytest.fixture
def env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": f"{CHILDREN}:{REPO / 'tests'}",
            "AL_URL": redis_url, "AL_PREFIX": prefix, "AL_EFFECTS": str(tmp_path / "effects")}


@pytest.fixture
def app(redis_url: str, prefix: str) -> Iterator[App]:
    ledger = Ledger.from_url(redis_url, prefix=prefix, lease_ms=2000)
    yield build(ledger)
    ledger.close()


@pytest.mark.parametrize("pipeline", ["shop", "shop_sync"])
def test_a_killed_worker_s_agent_run_is_finished_by_another(
        env: dict[str, str], app: App, tmp_path: Path, pipeline: str) -> None:
    a = worker(env, tmp_path / "a.log", AL_KILL_IN_TOOL="charge_card")
    b = None
    try:
        app.submit(pipeline, "seq", run_id="crashed")
        assert a.wait(120) == -signal.SIGKILL, (tmp_path / "a.log").read_text()
        b = worker(env, tmp_path / "b.log")
        final = app.result("crashed", timeout=120)
    finally:
        stop_processes(a, b)
    assert final == "done: reserved book; charged 30 for order 42", (tmp_path / "b.log").read_text()
    run = app.ledger.get_run("crashed")
    assert run is not None and run.status == RunStatus.COMPLETED and run.owner == ""
    done = read_effects(Path(env["AL_EFFECTS"]))
    assert Counter(tool for tool, _ in done) == {"reserve": 1, "charge_card": 2}
    # The charge in flight when the worker died ran again under the same key.
    assert len({key for tool, key in done if tool == "charge_card"}) == 1


def test_an_approval_decided_through_the_cli_is_continued_by_a_worker(
        env: dict[str, str], app: App, redis_url: str, prefix: str, tmp_path: Path) -> None:
    w = worker(env, tmp_path / "w.log")
    try:
        app.submit("shop_sync", "approval", run_id="refund-5")
        deadline = time.monotonic() + 120
        while (r := app.ledger.get_run("refund-5")) is None or r.status != RunStatus.WAITING:
            assert time.monotonic() < deadline and w.poll() is None, (tmp_path / "w.log").read_text()
            time.sleep(0.1)
        assert len(app.ledger.pending_approvals("refund-5")) == 1
        decided = subprocess.run([sys.executable, "-m", "agentledger", "--url", redis_url,
                                  "--prefix", prefix, "approve", "refund-5", "--by", "ann"],
                                 env={**OFFLINE_ENV, "PATH": "/usr/bin:/bin"}, cwd=str(REPO),
                                 capture_output=True, text=True, timeout=60)
        assert decided.returncode == 0, decided.stderr
        final = app.result("refund-5", timeout=120)
    finally:
        stop_processes(w)
    assert final == "done: reserved chair; refunded 70 for order 5"
    assert Counter(tool for tool, _ in read_effects(Path(env["AL_EFFECTS"]))) == {
        "reserve": 1, "refund": 1}
