"""Issue 8 item 6: steps in threads. A step called from a thread the run's context did not reach
is a clear error, not a silent unrecorded call; `agentledger.in_thread` records steps in threads
under keys that do not depend on thread timing; two threads numbering steps in one scope is a
clear error, so concurrent steps never receive each other's results, with on_mismatch='replay'
too. Threads that take turns in one scope (a framework handing a task to a worker thread)
number their steps in turn, as one thread would."""

from __future__ import annotations

import contextvars
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import agentledger
from agentledger import Ledger, LedgerError


def test_a_step_in_a_thread_without_the_run_context_is_an_error_not_silence(
        ledger: Ledger) -> None:
    calls: list[int] = []

    @agentledger.step
    def send(i: int) -> int:
        calls.append(i)
        return i

    with ledger.run("r"), ThreadPoolExecutor(2) as pool:
        with pytest.raises(LedgerError, match=r"no run in its context.*in_thread"):
            pool.submit(send, 1).result()
        # On purpose, unrecorded:
        def plain() -> int:
            with agentledger.outside_run():
                return send(2)

        assert pool.submit(plain).result() == 2
    assert calls == [2] and ledger.steps("r") == []
    # No run active any more: a plain call again.
    assert ThreadPoolExecutor(1).submit(send, 3).result() == 3


@pytest.mark.parametrize("on_mismatch", ["raise", "replay"])
def test_in_thread_records_steps_under_keys_fixed_by_submission_order(
        redis_url: str, prefix: str, on_mismatch: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, on_mismatch=on_mismatch)
    calls: list[int] = []

    @agentledger.step
    def square(i: int) -> int:
        time.sleep(random.random() / 200)  # threads finish in a different order each time
        calls.append(i)
        return i * i

    def work(i: int) -> list[int]:
        time.sleep(random.random() / 200)
        return [square(i), square(i + 100)]

    try:
        for _ in range(3):
            with ledger.run("r"), ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(agentledger.in_thread(work), i) for i in range(24)]
                assert [f.result() for f in futures] == [[i * i, (i + 100) ** 2] for i in range(24)]
        assert sorted(calls) == sorted([*range(24), *range(100, 124)])
        keys = {s.key for s in ledger.steps("r")}
        qual = square.__qualname__
        wq = work.__qualname__
        assert keys == {f"thread:{wq}#{n}/step:{qual}#{k}" for n in range(1, 25) for k in (1, 2)}
    finally:
        ledger.close()


def test_an_in_thread_wrapper_runs_once(ledger: Ledger) -> None:
    with ledger.run("r"):
        wrapped = agentledger.in_thread(lambda: 1)
        assert wrapped() == 1
        with pytest.raises(LedgerError, match="runs once"):
            wrapped()


@pytest.mark.parametrize("on_mismatch", ["raise", "replay"])
def test_racing_threads_in_one_scope_never_get_each_others_results(
        redis_url: str, prefix: str, on_mismatch: str) -> None:
    """Two threads with the run's context call the same step in the same scope; on the
    replay they reach it in the other order. Each gets its own result or a clear error."""
    ledger = Ledger.from_url(redis_url, prefix=prefix, on_mismatch=on_mismatch)

    @agentledger.step
    def lookup(who: str) -> str:
        return f"result for {who}"

    def race(order: list[str]) -> dict[str, object]:
        got: dict[str, object] = {}
        turns = {who: threading.Event() for who in order}

        def call(who: str) -> None:
            turns[who].wait()
            try:
                got[who] = lookup(who)
            except LedgerError as e:
                got[who] = e
            nxt = order.index(who) + 1
            if nxt < len(order):
                turns[order[nxt]].set()

        with ledger.run("r"):
            threads = [threading.Thread(target=contextvars.copy_context().run, args=(call, who))
                       for who in order]
            for t in threads:
                t.start()
            turns[order[0]].set()
            for t in threads:
                t.join()
        return got

    try:
        results = [race(["a", "b"]), race(["b", "a"])]
    finally:
        ledger.close()
    errors = 0
    for got in results:
        for who, value in got.items():
            if isinstance(value, LedgerError):
                errors += 1
                assert isinstance(value, agentledger.ThreadScopeError), value
                assert "not replayed" in str(value) and "in_thread" in str(value)
            else:
                assert value == f"result for {who}", got  # never the other thread's result
    assert errors  # the race is reported, not left to chance
