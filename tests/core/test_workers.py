"""Workers: real ``agentledger worker`` processes on a real Redis run submitted runs, continue
the runs of a SIGKILLed worker and the approvals decided through the CLI, drain on SIGTERM,
retry failing runs, and never run one run in two places at once.

The pipelines (tests/core/children/worker_app.py) log every step's side effect to a file."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from _workers import CHILDREN, Workers, assert_effects_once, effects, wait_for
from worker_app import build

from _support import OFFLINE_ENV
from agentledger import App, Ledger, RunStatus


@pytest.fixture
def workers(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Workers]:
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(CHILDREN), "AL_URL": redis_url,
           "AL_PREFIX": prefix, "AL_EFFECTS": str(tmp_path / "effects.jsonl"),
           "AL_LEASE_MS": "3000"}
    w = Workers(env, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


@pytest.fixture
def app(ledger: Ledger) -> App:
    return build(ledger)


def test_a_sigkilled_workers_runs_are_finished_by_another(workers: Workers, app: App) -> None:
    a = workers.start("--concurrency", "2", STEP_SLEEP="0.3")
    runs = [app.submit("steps", {"start": 10 * i}, run_id=f"kill-{i}") for i in range(3)]
    wait_for(lambda: len(effects(workers)) >= 4, 60, "steps in flight", workers)
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    before = effects(workers)
    assert any(e not in effects(workers, "end") for e in before)  # it died inside a step
    workers.start("--concurrency", "2", STEP_SLEEP="0.05")
    for i, rid in enumerate(runs):
        assert app.result(rid, timeout=60) == {"total": 10 * i + 5, "run": rid}
    assert_effects_once(workers, in_flight_allowed=2)
    assert Counter(e["step"] for e in effects(workers) if e["run"] == "kill-2")["s5"] >= 1
    for rid in runs:
        assert app.ledger.get_run(rid).status == RunStatus.COMPLETED  # type: ignore[union-attr]


def test_an_approval_decided_through_the_cli_is_continued_by_a_worker(
        workers: Workers, app: App) -> None:
    workers.start()
    rid = app.submit("approve", {"amount": 30}, run_id="order-7")
    wait_for(lambda: (r := app.ledger.get_run(rid)) is not None
             and r.status == RunStatus.WAITING, 60, "the run to wait", workers)
    decided = workers.cli("approve", rid, "--by", "ann")
    assert decided.returncode == 0, decided.stderr
    assert app.result(rid, timeout=60) == {"shipped": True, "by": "ann"}
    assert Counter(e["step"] for e in effects(workers)) == {"before": 1, "after": 1}


def test_sigterm_drains_and_another_worker_continues_at_once(
        workers: Workers, app: App) -> None:
    a = workers.start("--concurrency", "2", STEP_SLEEP="0.4")
    runs = [app.submit("steps", {"start": 0, "count": 10}, run_id=f"drain-{i}") for i in range(2)]
    wait_for(lambda: len(effects(workers)) >= 2, 60, "steps in flight", workers)
    a.send_signal(signal.SIGTERM)
    assert a.wait(30) == 0, workers.log()
    # Every step that started finished and recorded; the leases were released.
    assert len(effects(workers)) == len(effects(workers, "end"))
    for rid in runs:
        run = app.ledger.get_run(rid)
        assert run is not None and run.owner == "" and run.status == RunStatus.RUNNING
        assert all(s.status == "completed" for s in app.ledger.steps(rid))
    assert app.queue.workers() == []  # it said goodbye
    workers.start("--concurrency", "2")
    for rid in runs:
        assert app.result(rid, timeout=60)["total"] == 10
    assert_effects_once(workers)  # nothing was in doubt: no step ran twice


def test_a_failing_run_is_retried_then_fails_and_retry_queues_it_again(
        workers: Workers, app: App, tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    flag.write_text("up")
    workers.start(FAIL_FLAG=str(flag))
    rid = app.submit("flaky", None, run_id="flaky-1")
    with pytest.raises(RuntimeError, match="the flag is up"):
        app.result(rid, timeout=60)
    steps = Counter(e["step"] for e in effects(workers))
    assert steps == {"first": 1, "check": 3}  # tried, then retried twice (AL_RETRIES=2)
    assert len({e["key"] for e in effects(workers) if e["step"] == "check"}) == 3
    assert app.ledger.get_run(rid).status == RunStatus.FAILED  # type: ignore[union-attr]
    flag.unlink()
    queued = workers.cli("retry", rid)
    assert queued.returncode == 0, queued.stderr
    assert app.result(rid, timeout=60) == "ok"
    assert Counter(e["step"] for e in effects(workers)) == {"first": 1, "check": 4}


def test_two_workers_never_run_one_run_at_once(workers: Workers, app: App) -> None:
    workers.start("--concurrency", "3", "--name", "w-one", STEP_SLEEP="0.3")
    workers.start("--concurrency", "3", "--name", "w-two", STEP_SLEEP="0.3")
    runs = [f"both-{i}" for i in range(8)]
    for rid in runs:
        app.submit("steps", {"start": 0}, run_id=rid)
    for rid in runs:  # every run queued twice more: both workers will try them
        app.submit("steps", {"start": 0}, run_id=rid)
        app.submit("steps", {"start": 0}, run_id=rid)
    # Each worker says in its heartbeat what it runs.
    wait_for(lambda: any(w.runs for w in app.queue.workers()), 60, "a heartbeat", workers)
    listed = workers.cli("workers")
    assert listed.returncode == 0, listed.stderr
    assert "w-one" in listed.stdout and "w-two" in listed.stdout, listed.stdout
    for rid in runs:
        assert app.result(rid, timeout=60)["total"] == 5
    assert_effects_once(workers)
    assert len({e["pid"] for e in effects(workers)}) == 2  # both took part
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for e in effects(workers, "end"):
        spans[e["run"]].append((e["t0"], e["t1"], e["pid"]))
    for rid, s in spans.items():
        s.sort()
        for (_, end, pid), (start, _, pid2) in itertools.pairwise(s):
            assert pid == pid2 or end <= start, (rid, s)


def test_async_pipeline_and_submitting_again_after_the_end(workers: Workers, app: App) -> None:
    workers.start("--concurrency", "4")
    runs = [app.submit("asteps", {"start": i}) for i in range(4)]
    assert [app.result(r, timeout=60)["total"] for r in runs] == [5, 6, 7, 8]
    app.submit("asteps", {"start": 0}, run_id=runs[0])  # ended: not queued again
    time.sleep(0.5)
    assert len(effects(workers)) == 20
