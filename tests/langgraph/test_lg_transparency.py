"""The recording wrappers, installed for the whole process once a DurableCheckpointer exists,
change nothing for other graphs — and close, cancel and fail like the framework for ours."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph

from agentledger import Ledger, RunStatus
from agentledger.langgraph import DurableCheckpointer


class S(TypedDict, total=False):
    n: int


class Probe:
    """A node that announces itself on the custom stream and then waits to be cancelled."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.finished = 0
        self.started = asyncio.Event()

    async def __call__(self, state: S) -> S:
        self.started.set()
        get_stream_writer()("waiting")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return {"n": 1}


def _graph(node: Any, saver: Any) -> Any:
    b = StateGraph(S)
    b.add_node("wait", node)
    b.add_edge(START, "wait")
    b.add_edge("wait", END)
    return b.compile(checkpointer=saver)


def _cfg(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


@pytest.fixture
def no_gc() -> Iterator[None]:
    # Closing must not depend on the garbage collector finding the abandoned generator.
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("ours", [False, True], ids=["other-graph", "durable-graph"])
async def test_closing_the_stream_cancels_the_running_node_at_once(
        ledger: Ledger, no_gc: None, ours: bool) -> None:
    durable = DurableCheckpointer(ledger)  # installs the wrappers
    probe = Probe()
    graph = _graph(probe, durable if ours else InMemorySaver())
    stream = graph.astream({}, _cfg("t-close"), stream_mode="custom")
    assert await anext(stream) == "waiting"
    await stream.aclose()
    assert probe.cancelled == 1, "the node kept running after the stream was closed"
    if ours:
        run = ledger.get_run("t-close")
        assert run is not None and run.status == RunStatus.FAILED


async def test_cancelling_the_caller_cancels_the_node(ledger: Ledger) -> None:
    DurableCheckpointer(ledger)
    probe = Probe()
    graph = _graph(probe, InMemorySaver())

    async def consume() -> list[Any]:
        return [c async for c in graph.astream({}, _cfg("t-cancel"), stream_mode="custom")]

    task = asyncio.create_task(consume())
    await asyncio.wait_for(probe.started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.cancelled == 1 and probe.finished == 0


async def test_a_node_error_reaches_the_caller_unchanged(ledger: Ledger) -> None:
    DurableCheckpointer(ledger)
    boom = KeyError("boom")

    async def fail(state: S) -> S:
        raise boom

    for saver in (InMemorySaver(), DurableCheckpointer(ledger)):
        with pytest.raises(KeyError) as err:
            await _graph(fail, saver).ainvoke({}, _cfg(f"t-err-{type(saver).__name__}"))
        assert err.value is boom


def test_a_graph_on_another_checkpointer_gets_the_frameworks_own_stream(ledger: Ledger) -> None:
    DurableCheckpointer(ledger)
    graph = _graph(lambda s: {"n": 1}, InMemorySaver())
    stream = graph.stream({}, _cfg("t-plain"))
    astream = graph.astream({}, _cfg("t-plain"))
    try:
        # The generators of Pregel itself, not wrappers around them.
        assert stream.gi_code.co_qualname == "Pregel.stream"  # type: ignore[attr-defined]
        assert astream.ag_code.co_qualname == "Pregel.astream"  # type: ignore[attr-defined]
    finally:
        stream.close()
        asyncio.run(astream.aclose())


def test_the_ledger_draws_no_uuid4(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    # An app (or test) that seeds or mocks uuid4 sees the same ids with and without agentledger.
    draws: list[uuid.UUID] = []
    real = uuid.uuid4

    def counted() -> uuid.UUID:
        u = real()
        draws.append(u)
        return u

    monkeypatch.setattr(uuid, "uuid4", counted)
    counts = []
    for i, saver in enumerate((InMemorySaver(), DurableCheckpointer(ledger))):
        draws.clear()
        _graph(lambda s: {"n": 1}, saver).invoke({}, _cfg(f"t-uuid-{i}"))
        counts.append(len(draws))
    assert counts[0] == counts[1]
