"""LangGraph's own checkpointer conformance suite (base and optional capabilities) against
DurableCheckpointer on the real Redis: once through the async methods, as the suite is
written, and once through the sync methods behind a thin async facade."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import CapabilityReport
from langgraph.checkpoint.conformance.spec import (
    test_copy_thread,
    test_delete_for_runs,
    test_delete_thread,
    test_get_tuple,
    test_list,
    test_prune,
    test_put,
    test_put_writes,
)

from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer

# Every test the installed suite has, counted from its own lists.
EXPECTED = {
    "put": len(test_put.ALL_PUT_TESTS),
    "put_writes": len(test_put_writes.ALL_PUT_WRITES_TESTS),
    "get_tuple": len(test_get_tuple.ALL_GET_TUPLE_TESTS),
    "list": len(test_list.ALL_LIST_TESTS),
    "delete_thread": len(test_delete_thread.ALL_DELETE_THREAD_TESTS),
    "delete_for_runs": len(test_delete_for_runs.ALL_DELETE_FOR_RUNS_TESTS),
    "copy_thread": len(test_copy_thread.ALL_COPY_THREAD_TESTS),
    "prune": len(test_prune.ALL_PRUNE_TESTS),
}


class SyncMethods(BaseCheckpointSaver[str]):
    """Runs the async conformance suite through DurableCheckpointer's sync methods."""

    def __init__(self, inner: DurableCheckpointer) -> None:
        super().__init__(serde=inner.serde)
        self.inner = inner

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.put(*args, **kwargs)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> None:
        self.inner.put_writes(*args, **kwargs)

    async def aget_tuple(self, config: Any) -> CheckpointTuple | None:
        return self.inner.get_tuple(config)

    async def alist(self, config: Any, **kwargs: Any) -> AsyncIterator[CheckpointTuple]:
        for tup in self.inner.list(config, **kwargs):
            yield tup

    async def adelete_thread(self, thread_id: str) -> None:
        self.inner.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.inner.delete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.inner.copy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.inner.prune(thread_ids, strategy=strategy)


def _check(report: CapabilityReport) -> None:
    lines = []
    for cap, expected in EXPECTED.items():
        r = report.results[cap]
        lines.append(f"{cap}: {r.tests_passed} passed, {r.tests_failed} failed")
        assert r.detected, f"{cap} not detected as implemented"
        assert r.passed is True, f"{cap} failed: {r.failures}"
        assert (r.tests_passed, r.tests_failed) == (expected, 0), lines[-1]
    total = sum(EXPECTED.values())
    print(f"\nconformance {report.checkpointer_name}: {total} passed, 0 failed\n  "
          + "\n  ".join(lines))
    assert report.conformance_level() == "FULL"


@pytest.mark.parametrize("methods", ["async", "sync"])
async def test_lg_conformance_full_suite(redis_url: str, prefix: str, methods: str) -> None:
    ledgers: list[Ledger] = []

    async def factory() -> AsyncGenerator[BaseCheckpointSaver[str], None]:
        led = Ledger.from_url(redis_url, prefix=prefix)
        ledgers.append(led)
        saver = DurableCheckpointer(led)
        yield saver if methods == "async" else SyncMethods(saver)
        await led.aclose()
        led.close()

    registered = checkpointer_test(name=f"DurableCheckpointer ({methods})")(factory)
    report = await validate(registered)
    _check(report)
    assert sum(EXPECTED.values()) >= 81  # the 0.0.2 suite: 58 base + 23 optional
    assert len(ledgers) == len(EXPECTED)
