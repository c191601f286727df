"""A crew with DurableCrewHandler attached as the body of an App pipeline, run by real worker
processes: the kickoff joins the worker's run instead of opening it again. A worker SIGKILLed
inside the writer's first email is replaced by another that finishes the run with every effect
once (that email twice, under the same idempotency key); a human review decided through the
CLI is continued by a worker with no other action."""

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

CHILDREN = REPO / "tests" / "crewai" / "children"
sys.path.insert(0, str(CHILDREN))
sys.path.insert(0, str(CHILDREN.parent))
from crew_fakes import read_effects  # noqa: E402
from crew_worker_app import build  # noqa: E402


def worker(env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    return start_worker("crew_worker_app:app", env, log, concurrency=2, **extra)


@pytest.fixture
def env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": f"{CHILDREN}:{CHILDREN.parent}:{REPO / 'tests'}",
            "AL_URL": redis_url, "AL_PREFIX": prefix, "CREW_EFFECTS": str(tmp_path / "effects")}


@pytest.fixture
def app(redis_url: str, prefix: str) -> Iterator[App]:
    ledger = Ledger.from_url(redis_url, prefix=prefix, lease_ms=2000)
    yield build(ledger)
    ledger.close()


def test_a_killed_worker_s_crew_run_is_finished_by_another(
        env: dict[str, str], app: App, tmp_path: Path) -> None:
    a = worker(env, tmp_path / "a.log", CREW_KILL_AFTER_EMAIL="1")
    b = None
    try:
        app.submit("launch", False, run_id="crashed")
        assert a.wait(120) == -signal.SIGKILL, (tmp_path / "a.log").read_text()
        b = worker(env, tmp_path / "b.log")
        final = app.result("crashed", timeout=120)
    finally:
        stop_processes(a, b)
    assert final == "editor done after 0 results", (tmp_path / "b.log").read_text()
    run = app.ledger.get_run("crashed")
    assert run is not None and run.status == RunStatus.COMPLETED and run.owner == ""
    done = read_effects(Path(env["CREW_EFFECTS"]))
    assert done.count("lookup:launch") == 1
    emails = Counter(line for line in done if line.startswith("email:"))
    # The email in flight when the worker died went again under the same key; the other once.
    assert sorted(emails.values()) == [1, 2], emails
    assert len({line.split(":")[1] for line in emails}) == 2


def test_a_human_review_decided_through_the_cli_is_continued_by_a_worker(
        env: dict[str, str], app: App, redis_url: str, prefix: str, tmp_path: Path) -> None:
    w = worker(env, tmp_path / "w.log")
    try:
        app.submit("launch", True, run_id="review-1")
        deadline = time.monotonic() + 120
        while (r := app.ledger.get_run("review-1")) is None or r.status != RunStatus.WAITING:
            assert time.monotonic() < deadline and w.poll() is None, (tmp_path / "w.log").read_text()
            time.sleep(0.1)
        assert len(app.ledger.pending_approvals("review-1")) == 1
        decided = subprocess.run([sys.executable, "-m", "agentledger", "--url", redis_url,
                                  "--prefix", prefix, "approve", "review-1", "--by", "ann"],
                                 env={**OFFLINE_ENV, "PATH": "/usr/bin:/bin"}, cwd=str(REPO),
                                 capture_output=True, text=True, timeout=60)
        assert decided.returncode == 0, decided.stderr
        final = app.result("review-1", timeout=120)
    finally:
        stop_processes(w)
    assert final == "editor done after 0 results"
    done = read_effects(Path(env["CREW_EFFECTS"]))
    assert done.count("lookup:launch") == 1
    assert Counter(line.split(":")[1] for line in done if line.startswith("email:")) == {
        "team@example.com": 1, "press@example.com": 1}
