"""One retention rule for every adapter: a LangGraph thread's keys expire with its run once the
run ends (the ledger's completed_ttl_s, 7 days by default), and a waiting thread keeps them."""

from __future__ import annotations

from typing import Any, TypedDict

import redis
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agentledger import Ledger, RunStatus
from agentledger.langgraph import DurableCheckpointer

WEEK_MS = 7 * 24 * 3600 * 1000


class S(TypedDict, total=False):
    answer: Any


def _graph(saver: DurableCheckpointer, ask: bool = False) -> Any:
    def node(state: S) -> S:
        return {"answer": interrupt("ok?") if ask else 42}

    b = StateGraph(S)
    b.add_node("work", node)
    b.add_edge(START, "work")
    b.add_edge("work", END)
    return b.compile(checkpointer=saver)


def _cfg(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


def _ttls(client: redis.Redis, prefix: str, thread: str) -> dict[str, int]:
    keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:{{{thread}}}:*")]
    assert any(":lg:" in k for k in keys) and any(k.endswith(":run") for k in keys), keys
    return {k: client.pttl(k) for k in keys}


def test_an_ended_thread_expires_with_its_run_by_default(
        redis_url: str, ledger: Ledger, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        _graph(DurableCheckpointer(ledger)).invoke({}, _cfg("t-ended"))
        ttls = _ttls(client, prefix, "t-ended")
        assert all(WEEK_MS - 60_000 < t <= WEEK_MS for t in ttls.values()), ttls
        # from_url() without ttl: the same default.
        saver = DurableCheckpointer.from_url(redis_url, prefix=prefix)
        try:
            _graph(saver).invoke({}, _cfg("t-from-url"))
        finally:
            saver.close()
        ttls = _ttls(client, prefix, "t-from-url")
        assert all(WEEK_MS - 60_000 < t <= WEEK_MS for t in ttls.values()), ttls
    finally:
        client.close()


def test_a_waiting_thread_keeps_its_keys_until_its_run_ends(
        redis_url: str, ledger: Ledger, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        graph = _graph(DurableCheckpointer(ledger), ask=True)
        graph.invoke({}, _cfg("t-wait"))
        run = ledger.get_run("t-wait")
        assert run is not None and run.status == RunStatus.WAITING
        assert all(t == -1 for t in _ttls(client, prefix, "t-wait").values())
        graph.invoke(Command(resume="yes"), _cfg("t-wait"))
        ttls = _ttls(client, prefix, "t-wait")
        assert all(WEEK_MS - 60_000 < t <= WEEK_MS for t in ttls.values()), ttls
    finally:
        client.close()


def test_the_ledgers_retention_applies_and_none_keeps(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    short = Ledger.from_url(redis_url, prefix=prefix, completed_ttl_s=120)
    keep = Ledger.from_url(redis_url, prefix=prefix, completed_ttl_s=None)
    try:
        _graph(DurableCheckpointer(short)).invoke({}, _cfg("t-short"))
        assert all(0 < t <= 120_000 for t in _ttls(client, prefix, "t-short").values())
        _graph(DurableCheckpointer(keep)).invoke({}, _cfg("t-keep"))
        assert all(t == -1 for t in _ttls(client, prefix, "t-keep").values())
    finally:
        short.close()
        keep.close()
        client.close()
