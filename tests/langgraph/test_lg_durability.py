"""A graph invoked with ``durability=`` records its steps at that level (docs/durability.md);
without it, at the ledger's (``sync`` by default)."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

import agentledger
from agentledger import Ledger, RunStatus, _context
from agentledger.langgraph import DurableCheckpointer


class S(TypedDict, total=False):
    n: int


@agentledger.step
def fetch(i: int) -> int:
    return i + 1


def _graph(saver: DurableCheckpointer, seen: list[tuple[bool, int]]) -> Any:
    def node(state: S) -> S:
        n = sum(fetch(i) for i in range(5))
        session = _context._session.get()
        assert session is not None
        seen.append((session._hot.pipelined, session._hot.unacknowledged))
        return {"n": n}

    b = StateGraph(S)
    b.add_node("work", node)
    b.add_edge(START, "work")
    b.add_edge("work", END)
    return b.compile(checkpointer=saver)


# Unacknowledged at the end of the node: at "async" its five claims and five outcomes, and
# those of the input step's checkpoint writes (its input writes, the input checkpoint, the
# first loop checkpoint) that LangGraph's background saves sent before then, all on the run's
# connection; at "exit" the steps only (LangGraph saves at the end).
@pytest.mark.parametrize(("durability", "pipelined", "unacknowledged"),
                         [(None, False, (0, 0)), ("sync", False, (0, 0)),
                          ("async", True, (10, 13)), ("exit", True, (10, 10))])
def test_the_invocations_durability_is_the_runs(redis_url: str, prefix: str,
                                                durability: str | None, pipelined: bool,
                                                unacknowledged: tuple[int, int]) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    saver = DurableCheckpointer(ledger)
    seen: list[tuple[bool, int]] = []
    graph = _graph(saver, seen)
    kwargs = {} if durability is None else {"durability": durability}
    try:
        cfg: Any = {"configurable": {"thread_id": "t"}}
        assert graph.invoke({"n": 0}, cfg, **kwargs) == {"n": 15}
        (flag, unacked), = seen
        assert flag is pipelined
        assert unacknowledged[0] <= unacked <= unacknowledged[1]
        run = ledger.get_run("t")
        assert run is not None and run.status == RunStatus.COMPLETED
        assert [s.status for s in ledger.steps("t")] == ["completed"] * 5
        # Replayed from the records in a second invocation of the thread.
        assert asyncio.run(graph.ainvoke({"n": 0}, {"configurable": {"thread_id": "t2"}},
                                         **kwargs)) == {"n": 15}
    finally:
        ledger.close()


@pytest.mark.parametrize(("opener", "durability", "pipelined"),
                         [("sync", None, False), ("sync", "async", True),
                          ("async", "sync", False), ("async", None, True)])
def test_a_joined_run_records_the_graph_at_the_invocations_durability(
        redis_url: str, prefix: str, opener: str, durability: str | None,
        pipelined: bool) -> None:
    """A graph invoked inside a run opened elsewhere (a worker's pipeline, ``ledger.run``)
    records its steps at its own ``durability=``; the opener's level is back afterwards."""
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability=opener)
    saver = DurableCheckpointer(ledger)
    seen: list[tuple[bool, int]] = []
    graph = _graph(saver, seen)
    kwargs = {} if durability is None else {"durability": durability}
    try:
        with ledger.run("joined") as outer:
            cfg: Any = {"configurable": {"thread_id": "joined"}}
            assert graph.invoke({"n": 0}, cfg, **kwargs) == {"n": 15}
            (flag, unacked), = seen
            assert flag is pipelined
            # At a pipelined level, the node's ten step records and up to three of LangGraph's
            # background checkpoint writes (see the test above) are not yet acknowledged.
            assert (10 <= unacked <= 13) if pipelined else unacked == 0
            assert outer._hot.pipelined is (opener != "sync")  # the opener's level again
            fetch(100)
            if opener == "sync":  # a sync record acknowledges everything sent before it
                assert outer._hot.unacknowledged == 0
        assert [s.status for s in ledger.steps("joined")] == ["completed"] * 6
    finally:
        ledger.close()
