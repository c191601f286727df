"""``App`` in one process: submit, result, errors that name what is wrong, and a Worker
thread (the subprocess tests are in test_workers.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import agentledger
from agentledger import App, Ledger, LedgerError, RunSession, Worker


@pytest.fixture
def app(ledger: Ledger) -> App:
    app = App(ledger, shards=2, max_retries=1, backoff_s=0.05)
    calls: list[str] = []

    @agentledger.step
    def double(n: int) -> int:
        calls.append(agentledger.current_run().run_id)  # type: ignore[union-attr]
        return 2 * n

    @app.pipeline()
    def doubler(input: dict[str, int], run: RunSession) -> dict[str, object]:
        return {"n": double(input["n"]), "tuple": (1, 2)}

    @app.pipeline("boom")
    async def boom(input: str, run: RunSession) -> None:
        raise KeyError(input)

    app.calls = calls  # type: ignore[attr-defined]
    return app


@pytest.fixture
def worker(app: App) -> Iterator[Worker]:
    w = Worker(app, concurrency=2, heartbeat_s=0.2)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        yield w
    finally:
        w.stop()
        t.join(10)
        assert not t.is_alive()


def test_submit_and_result_through_the_codec(app: App, worker: Worker) -> None:
    rid = app.submit("doubler", {"n": 21}, run_id="d-1")
    assert app.result(rid, timeout=30) == {"n": 42, "tuple": (1, 2)}  # a tuple comes back
    assert app.submit(app.pipelines["doubler"].fn, {"n": 21}, run_id="d-1") == "d-1"
    assert app.ledger.get_run(rid).kind == "doubler"  # type: ignore[union-attr]


async def test_async_submit_and_a_failing_async_pipeline(app: App, worker: Worker) -> None:
    rid = await app.asubmit("boom", "missing")
    with pytest.raises(KeyError, match="missing"):
        await app.aresult(rid, timeout=30)
    rec = app.queue.app_record(rid)
    assert rec["failures"] == "2"  # tried, retried once, then it stays failed
    assert await app.asubmit("doubler", {"n": 1}) != rid


def test_errors_name_what_is_wrong(app: App) -> None:
    with pytest.raises(LedgerError, match="no pipeline 'nope'"):
        app.submit("nope", {})
    with pytest.raises(ValueError, match="braces"):
        app.submit("doubler", {}, run_id="a{b}")
    with pytest.raises(LedgerError, match="never submitted"):
        app.result("ghost", timeout=0.1)
    app.submit("doubler", {"n": 1}, run_id="x")
    with pytest.raises(LedgerError, match="submitted to pipeline 'doubler', not 'boom'"):
        app.submit("boom", "x", run_id="x")
    with pytest.raises(TimeoutError):
        app.result("x", timeout=0.05)  # no worker runs it
    with pytest.raises(ValueError, match="already registered"):
        app.pipeline("doubler")(lambda i, r: None)


def test_a_shard_count_that_differs_from_the_queues_is_refused(app: App, ledger: Ledger) -> None:
    app.queue.ensure_groups()
    with pytest.raises(LedgerError, match="needs the same number"):
        App(ledger, shards=3).queue.ensure_groups()


def test_the_console_lists_workers_and_their_runs(app: App, worker: Worker) -> None:
    import json

    from _console import Console, http

    with Console(app.ledger) as console:
        deadline = time.monotonic() + 30
        while True:  # the first heartbeat comes within heartbeat_s
            found = json.loads(http(console.url + "/api/workers")[1])
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [w["id"] for w in found] == [worker.id] and found[0]["concurrency"] == 2
        assert worker.id in http(console.url + "/workers")[1]
