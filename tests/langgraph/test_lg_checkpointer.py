"""DurableCheckpointer on the real Redis, driven by real LangGraph graphs: round trips, TTL,
deletion together with the run's step records, copy, prune, corrupt records, no pickle, and a
thread that survives a SIGKILL of the process writing it."""

from __future__ import annotations

import asyncio
import operator
import pickle
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, Send, interrupt
from redis.crc import key_slot

from _support import RedisServer, killed, run_child
from agentledger import (
    CorruptRecordError,
    Ledger,
    LedgerError,
    LedgerUnavailableError,
    StepCall,
)
from agentledger.langgraph import DurableCheckpointer


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _reply(state: Chat) -> dict[str, Any]:
    # The answer depends on the input only (how many messages came before).
    n = len(state["messages"])
    return {"messages": [AIMessage(content=f"reply to {n} messages", id=f"ai-{n}")]}


def chat_graph(saver: DurableCheckpointer) -> Any:
    b = StateGraph(Chat)
    b.add_node("reply", _reply)
    b.add_edge(START, "reply")
    b.add_edge("reply", END)
    return b.compile(checkpointer=saver)


def cfg(thread: str, **extra: Any) -> Any:
    return {"configurable": {"thread_id": thread, **extra}}


def human(i: int) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=f"question {i}", id=f"h-{i}")]}


def texts(state: Any) -> list[str]:
    return [m.content for m in state.values["messages"]]


def expected_texts(turns: int) -> list[str]:
    out: list[str] = []
    for i in range(turns):
        out += [f"question {i}", f"reply to {2 * i + 1} messages"]
    return out


@pytest.fixture
def saver(ledger: Ledger) -> DurableCheckpointer:
    return DurableCheckpointer(ledger)


@pytest.fixture
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def thread_keys(client: redis.Redis, prefix: str, thread: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:{{{thread}}}:*"))


# ---- round trips ---------------------------------------------------------------------------
def test_lg_checkpointer_graph_roundtrip_sync(saver: DurableCheckpointer, ledger: Ledger,
                                             client: redis.Redis, prefix: str) -> None:
    graph = chat_graph(saver)
    for i in range(4):
        graph.invoke(human(i), cfg("t-sync"))
    assert texts(graph.get_state(cfg("t-sync"))) == expected_texts(4)
    # A fresh checkpointer (no cached lists, as after a restart) reads the same state.
    fresh = chat_graph(DurableCheckpointer(ledger))
    assert texts(fresh.get_state(cfg("t-sync"))) == expected_texts(4)
    history = list(fresh.get_state_history(cfg("t-sync")))
    assert len(history) == 4 * 3  # per turn: the input, the start, and the reply
    assert texts(history[-1]) == []
    # The message list grew by appends only: later versions are stored as deltas.
    chain = client.hlen(f"{prefix}:{{t-sync}}:lg:chain")
    assert chain >= 7


async def test_lg_checkpointer_graph_roundtrip_async(saver: DurableCheckpointer,
                                                    ledger: Ledger) -> None:
    graph = chat_graph(saver)
    for i in range(3):
        await graph.ainvoke(human(i), cfg("t-async"))
    assert texts(await graph.aget_state(cfg("t-async"))) == expected_texts(3)
    fresh = chat_graph(DurableCheckpointer(ledger))
    assert texts(await fresh.aget_state(cfg("t-async"))) == expected_texts(3)
    listed = [t async for t in saver.alist(cfg("t-async"), limit=2)]
    assert len(listed) == 2
    assert listed[0].checkpoint["id"] > listed[1].checkpoint["id"]
    # Sync and async clients see one store.
    assert texts(fresh.get_state(cfg("t-async"))) == expected_texts(3)


@pytest.mark.parametrize("mode", ["sync", "async", "exit"])
def test_lg_checkpointer_every_durability_mode(saver: DurableCheckpointer, ledger: Ledger,
                                              mode: str) -> None:
    graph = chat_graph(saver)
    for i in range(3):
        graph.invoke(human(i), cfg(f"t-{mode}"), durability=mode)
    fresh = chat_graph(DurableCheckpointer(ledger))
    assert texts(fresh.get_state(cfg(f"t-{mode}"))) == expected_texts(3)
    saved = len(list(saver.list(cfg(f"t-{mode}"))))
    assert saved == (3 if mode == "exit" else 9)  # "exit" saves once per invoke


def test_lg_checkpointer_list_filters(saver: DurableCheckpointer) -> None:
    graph = chat_graph(saver)
    for i in range(3):
        graph.invoke(human(i), cfg("t-list"))
    all_ = list(saver.list(cfg("t-list")))
    assert len(all_) == 9
    ids = [t.checkpoint["id"] for t in all_]
    assert ids == sorted(ids, reverse=True)
    inputs = list(saver.list(cfg("t-list"), filter={"source": "input"}))
    assert all(t.metadata["source"] == "input" for t in inputs) and len(inputs) == 3
    before = list(saver.list(cfg("t-list"), before=all_[2].config, limit=3))
    assert [t.checkpoint["id"] for t in before] == ids[3:6]
    assert list(saver.list(cfg("no-such-thread"))) == []
    # A config naming one checkpoint lists just that one.
    one = list(saver.list(all_[4].config))
    assert [t.checkpoint["id"] for t in one] == [ids[4]]
    # Without a thread: every thread under this prefix.
    graph.invoke(human(0), cfg("t-list-2"))
    threads = {t.config["configurable"]["thread_id"] for t in saver.list(None)}
    assert threads == {"t-list", "t-list-2"}


def test_lg_checkpointer_fork_and_remove_messages(saver: DurableCheckpointer,
                                                 ledger: Ledger) -> None:
    graph = chat_graph(saver)
    for i in range(3):
        graph.invoke(human(i), cfg("t-fork"))
    history = list(graph.get_state_history(cfg("t-fork")))
    after_first = next(s for s in history if len(s.values.get("messages", [])) == 2
                       and s.next == ())
    # Time travel: continue from the end of turn 1; the main branch keeps its six messages.
    graph.invoke(human(7), after_first.config)
    forked = texts(graph.get_state(cfg("t-fork")))
    assert forked == [*expected_texts(1), "question 7", "reply to 3 messages"]
    assert texts(graph.get_state(history[0].config)) == expected_texts(3)
    # A list that shrinks (RemoveMessage) is stored whole, and read back right.
    graph.update_state(cfg("t-fork"), {"messages": [RemoveMessage(id="h-0")]})
    assert texts(graph.get_state(cfg("t-fork")))[0] == "reply to 1 messages"
    fresh = chat_graph(DurableCheckpointer(ledger))
    assert texts(fresh.get_state(cfg("t-fork"))) == forked[1:]


# ---- keys, TTL, deletion -------------------------------------------------------------------
def test_lg_checkpointer_keys_carry_hash_tag_and_are_tracked(
        saver: DurableCheckpointer, client: redis.Redis, prefix: str) -> None:
    graph = chat_graph(saver)
    graph.invoke(human(0), cfg("order-42"))
    keys = thread_keys(client, prefix, "order-42")
    assert keys and all(k.startswith(f"{prefix}:{{order-42}}:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one Redis Cluster slot
    tracked = {m.decode() for m in client.smembers(f"{prefix}:{{order-42}}:keys")}
    lg_keys = {k for k in keys if ":lg:" in k}
    assert lg_keys and lg_keys <= tracked
    with pytest.raises(ValueError, match="hash tag"):
        graph.invoke(human(0), cfg("bad{thread}"))
    assert thread_keys(client, prefix, "bad") == []


def test_lg_checkpointer_ttl_set_and_refreshed(redis_url: str, client: redis.Redis,
                                              prefix: str) -> None:
    saver = DurableCheckpointer.from_url(redis_url, prefix=prefix, ttl=60)
    graph = chat_graph(saver)
    graph.invoke(human(0), cfg("t-ttl"))
    keys = thread_keys(client, prefix, "t-ttl")
    ttls = {k: client.pttl(k) for k in keys}
    assert any(":lg:" in k for k in ttls) and all(0 < t <= 60_000 for t in ttls.values()), ttls
    for k in keys:
        client.pexpire(k, 5_000)
    graph.invoke(human(1), cfg("t-ttl"))
    assert all(client.pttl(k) > 5_000 for k in thread_keys(client, prefix, "t-ttl"))
    saver.close()
    with pytest.raises(ValueError):
        DurableCheckpointer.from_url(redis_url, prefix=prefix, ttl=0)
    # Without a ttl the ended thread follows the ledger's retention (test_lg_retention.py).


def test_lg_checkpointer_ttl_on_direct_puts(ledger: Ledger, client: redis.Redis,
                                           prefix: str) -> None:
    # Outside a graph run only the checkpointer sets the TTL: every put refreshes it.
    saver = DurableCheckpointer(ledger, ttl=30)
    ck = {**empty_checkpoint(), "channel_values": {"x": 1}, "channel_versions": {"x": 1}}
    stored = saver.put(cfg("t-ttl2", checkpoint_ns=""), ck, {"step": 0}, {"x": 1})
    saver.put_writes(stored, [("x", 2)], "task")
    keys = [k for k in thread_keys(client, prefix, "t-ttl2")]
    assert len(keys) >= 6 and all(0 < client.pttl(k) <= 30_000 for k in keys)


def test_lg_checkpointer_delete_thread_removes_step_records(
        saver: DurableCheckpointer, ledger: Ledger, client: redis.Redis, prefix: str) -> None:
    graph = chat_graph(saver)
    graph.invoke(human(0), cfg("t-del"))
    with ledger.run("t-del") as session:
        assert session.call(StepCall("tool", "send_mail", inputs={"to": "x"}), lambda: 42) == 42
    graph.invoke(human(1), cfg("t-del"))
    graph.invoke(human(0), cfg("t-keep"))
    assert ledger.get_run("t-del") is not None
    assert client.hlen(f"{prefix}:{{t-del}}:steps") > 0
    saver.delete_thread("t-del")
    assert thread_keys(client, prefix, "t-del") == []
    assert ledger.get_run("t-del") is None
    assert graph.get_state(cfg("t-del")).values == {}
    assert texts(graph.get_state(cfg("t-keep"))) == expected_texts(1)


async def test_lg_checkpointer_adelete_thread(saver: DurableCheckpointer, client: redis.Redis,
                                             prefix: str) -> None:
    graph = chat_graph(saver)
    await graph.ainvoke(human(0), cfg("t-adel"))
    await saver.adelete_thread("t-adel")
    assert thread_keys(client, prefix, "t-adel") == []


# ---- copy and prune ------------------------------------------------------------------------
def test_lg_checkpointer_copy_then_prune_keeps_state(saver: DurableCheckpointer,
                                                    ledger: Ledger, client: redis.Redis,
                                                    prefix: str) -> None:
    graph = chat_graph(saver)
    for i in range(4):
        graph.invoke(human(i), cfg("t-src"))
    saver.copy_thread("t-src", "t-dst")
    assert texts(graph.get_state(cfg("t-dst"))) == expected_texts(4)
    assert len(list(saver.list(cfg("t-dst")))) == len(list(saver.list(cfg("t-src"))))
    blobs_before = client.hlen(f"{prefix}:{{t-src}}:lg:blobs")
    saver.prune(["t-src"])
    assert len(list(saver.list(cfg("t-src")))) == 1
    assert client.hlen(f"{prefix}:{{t-src}}:lg:blobs") < blobs_before
    # The kept checkpoint's messages are a chain of deltas: prune kept every base it needs.
    fresh = chat_graph(DurableCheckpointer(ledger))
    assert texts(fresh.get_state(cfg("t-src"))) == expected_texts(4)
    fresh.invoke(human(4), cfg("t-src"))
    assert texts(fresh.get_state(cfg("t-src"))) == expected_texts(5)
    # The copy did not move with the source.
    assert texts(graph.get_state(cfg("t-dst"))) == expected_texts(4)
    saver.prune(["t-dst"], strategy="delete")
    assert thread_keys(client, prefix, "t-dst") == []
    with pytest.raises(ValueError, match="strategy"):
        saver.prune(["t-src"], strategy="keep_some")


async def test_lg_checkpointer_async_copy_prune(saver: DurableCheckpointer) -> None:
    graph = chat_graph(saver)
    for i in range(3):
        await graph.ainvoke(human(i), cfg("ta-src"))
    await saver.acopy_thread("ta-src", "ta-dst")
    await saver.aprune(["ta-src"])
    assert len([t async for t in saver.alist(cfg("ta-src"))]) == 1
    assert texts(await graph.aget_state(cfg("ta-src"))) == expected_texts(3)
    assert texts(await graph.aget_state(cfg("ta-dst"))) == expected_texts(3)


def test_lg_checkpointer_lost_base_is_rewritten_whole(ledger: Ledger) -> None:
    # Two processes on one thread: the other one deleted the base of our next delta.
    a, b = DurableCheckpointer(ledger), DurableCheckpointer(ledger)
    m1, m2 = HumanMessage(content="one", id="1"), AIMessage(content="two", id="2")
    ck1 = {**empty_checkpoint(), "channel_values": {"messages": [m1]},
           "channel_versions": {"messages": a.get_next_version(None, None)}}
    c1 = a.put(cfg("t-base", checkpoint_ns=""), ck1, {"step": 0}, ck1["channel_versions"])
    b.delete_thread("t-base")
    v2 = a.get_next_version(ck1["channel_versions"]["messages"], None)
    ck2 = {**empty_checkpoint(), "channel_values": {"messages": [m1, m2]},
           "channel_versions": {"messages": v2}}
    c2 = a.put(c1, ck2, {"step": 1}, {"messages": v2})
    got = b.get_tuple(c2)
    assert got is not None and got.checkpoint["channel_values"]["messages"] == [m1, m2]


def _two_checkpoints(saver: DurableCheckpointer) -> tuple[Any, Any, Any, Any, str]:
    """Two messages, a checkpoint holding the first and the next holding both (stored as an
    append to the first's list), and the second's version."""
    m1, m2 = HumanMessage(content="one", id="1"), AIMessage(content="two", id="2")
    ck1 = {**empty_checkpoint(), "channel_values": {"messages": [m1]},
           "channel_versions": {"messages": saver.get_next_version(None, None)}}
    v2 = saver.get_next_version(ck1["channel_versions"]["messages"], None)
    ck2 = {**empty_checkpoint(), "channel_values": {"messages": [m1, m2]},
           "channel_versions": {"messages": v2}}
    return m1, m2, ck1, ck2, v2


@pytest.mark.parametrize("level", ["sync", "async"])
def test_lg_checkpointer_lost_base_inside_a_run(ledger: Ledger, client: redis.Redis,
                                                prefix: str, level: str) -> None:
    """Inside a graph run the put goes over the run's step connection; its delta base deleted
    meanwhile: at 'sync' the put is refused at its barrier and written again whole; at
    'async' the refusal is read at the run's end, which leaves the run open (never marked
    ended without its last checkpoint)."""
    saver = DurableCheckpointer(ledger)
    thread = f"t-base-{level}"
    m1, m2, ck1, ck2, v2 = _two_checkpoints(saver)
    session = ledger.open_run(thread)
    session.use_durability(level)
    token = session.activate()
    try:
        c1 = saver.put(cfg(thread, checkpoint_ns=""), ck1, {"step": 0}, ck1["channel_versions"])
        session.barrier()
        client.delete(f"{prefix}:{{{thread}}}:lg:blobs")  # the base of the next delta
        c2 = saver.put(c1, ck2, {"step": 1}, {"messages": v2})
    finally:
        session.deactivate(token)
    if level == "sync":
        assert session.finish("completed")
        got = saver.get_tuple(c2)
        assert got is not None and got.checkpoint["channel_values"]["messages"] == [m1, m2]
        assert ledger.get_run(thread).status == "completed"  # type: ignore[union-attr]
    else:
        with pytest.raises(LedgerError, match="is gone"):
            session.finish("completed")
        assert ledger.get_run(thread).status == "running"  # type: ignore[union-attr]


@pytest.mark.parametrize("between", ["task writes", "another call"])
def test_lg_checkpointer_lost_base_read_by_another_caller(ledger: Ledger, client: redis.Redis,
                                                          prefix: str, between: str) -> None:
    """At 'sync', between a put's send and its barrier (LangGraph saves from a background
    thread while the next superstep's tasks run): a task's writes held after it, or another
    thread's acknowledged call that reads the batch carrying it. The put whose base is gone is
    still put again whole, the other caller is not refused for it, and nothing after it is
    lost."""
    ledger.register_scripts({"test.noop": "return 1"})
    saver = DurableCheckpointer(ledger)
    thread = f"t-between-{between.replace(' ', '-')}"
    m1, m2, ck1, ck2, v2 = _two_checkpoints(saver)
    session = ledger.open_run(thread)
    token = session.activate()
    other: list[Any] = []
    try:
        c1 = saver.put(cfg(thread, checkpoint_ns=""), ck1, {"step": 0}, ck1["channel_versions"])
        client.delete(f"{prefix}:{{{thread}}}:lg:blobs")  # the base of the next delta
        barrier = session.barrier

        def interleaved() -> None:  # what runs between the put's send and its barrier
            if not other:
                if between == "task writes":
                    saver.put_writes(cfg(thread, checkpoint_ns="", checkpoint_id=ck2["id"]),
                                     [("messages", "x")], "task-1")
                    other.append("held")
                else:
                    try:
                        other.append(session.call_script(
                            "test.noop", [f"{prefix}:{{{thread}}}:x"], []))
                    except LedgerError as e:  # refused for the put's reply: wrong
                        other.append(e)
            barrier()

        session.barrier = interleaved  # type: ignore[method-assign]
        c2 = saver.put(c1, ck2, {"step": 1}, {"messages": v2})
    finally:
        session.deactivate(token)
    assert other == (["held"] if between == "task writes" else [1])
    assert session.finish("completed")
    got = saver.get_tuple(c2)
    assert got is not None and got.checkpoint["channel_values"]["messages"] == [m1, m2]
    if between == "task writes":
        assert [(t, c, v) for t, c, v in got.pending_writes] == [("task-1", "messages", "x")]
    assert ledger.get_run(thread).status == "completed"  # type: ignore[union-attr]


# ---- bad data ------------------------------------------------------------------------------
def test_lg_checkpointer_corrupt_record_names_key(saver: DurableCheckpointer,
                                                 client: redis.Redis, prefix: str) -> None:
    graph = chat_graph(saver)
    graph.invoke(human(0), cfg("t-bad"))
    cp_key = f"{prefix}:{{t-bad}}:lg:cp"
    field, good = next(iter(client.hgetall(cp_key).items()))
    client.hset(cp_key, field, b"\xc1 not msgpack")
    with pytest.raises(CorruptRecordError) as err:
        saver.get_tuple(cfg("t-bad", checkpoint_ns="",
                            checkpoint_id=field.decode().rpartition("\x1f")[2]))
    assert cp_key in str(err.value)
    client.hset(cp_key, field, good)
    # A truncated blob.
    blobs_key = f"{prefix}:{{t-bad}}:lg:blobs"
    for f, v in client.hgetall(blobs_key).items():
        client.hset(blobs_key, f, v[: len(v) // 2] if v.startswith(b"al.list") else v)
    with pytest.raises(CorruptRecordError) as err:
        list(saver.list(cfg("t-bad")))
    assert blobs_key in str(err.value)
    # Other threads are unaffected.
    graph.invoke(human(0), cfg("t-good"))
    assert texts(graph.get_state(cfg("t-good"))) == expected_texts(1)


class _Trap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def test_lg_checkpointer_never_unpickles(saver: DurableCheckpointer, client: redis.Redis,
                                        prefix: str, tmp_path: Path) -> None:
    graph = chat_graph(saver)
    graph.invoke(human(0), cfg("t-pickle"))
    blobs_key = f"{prefix}:{{t-pickle}}:lg:blobs"
    trap = tmp_path / "unpickled"
    for f in client.hkeys(blobs_key):
        client.hset(blobs_key, f, b"pickle\x1f" + pickle.dumps(_Trap(str(trap))))
    with pytest.raises(CorruptRecordError, match="pickle") as err:
        saver.get_tuple(cfg("t-pickle"))
    assert blobs_key in str(err.value)
    assert not trap.exists()


def test_lg_checkpointer_refuses_pickle_serde(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="pickle"):
        DurableCheckpointer(ledger, serde=JsonPlusSerializer(pickle_fallback=True))
    saver = DurableCheckpointer(ledger)
    ck = {**empty_checkpoint(), "channel_values": {"lock": threading.Lock()},
          "channel_versions": {"lock": 1}}
    with pytest.raises(TypeError):
        saver.put(cfg("t-lock", checkpoint_ns=""), ck, {}, {"lock": 1})
    assert saver.get_tuple(cfg("t-lock")) is None


async def test_lg_checkpointer_sync_methods_on_event_loop(saver: DurableCheckpointer) -> None:
    # LangGraph may call the sync methods from a coroutine: they use the sync client, so
    # they neither deadlock nor need the loop.
    graph = chat_graph(saver)
    await graph.ainvoke(human(0), cfg("t-loop"))
    tup = saver.get_tuple(cfg("t-loop"))  # on the event loop's thread
    assert tup is not None
    saver.put_writes(tup.config, [("x", 1)], "task-1")
    assert await asyncio.wait_for(saver.aget_tuple(tup.config), 10) is not None
    assert texts(graph.get_state(cfg("t-loop"))) == expected_texts(1)


def test_lg_checkpointer_from_url_reads_agentledger_url(redis_url: str, prefix: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTLEDGER_URL", redis_url)
    saver = DurableCheckpointer.from_url(prefix=prefix)
    try:
        assert saver.ledger.url == redis_url
        chat_graph(saver).invoke(human(0), cfg("t-env"))
        assert saver.get_tuple(cfg("t-env")) is not None
    finally:
        saver.close()


def test_lg_checkpointer_from_url(redis_url: str, prefix: str) -> None:
    saver = DurableCheckpointer.from_url(redis_url, prefix=prefix, ttl=100)
    try:
        assert saver.ledger.prefix == prefix and saver.ttl == 100
        chat_graph(saver).invoke(human(0), cfg("t-url"))
        assert saver.get_tuple(cfg("t-url")) is not None
    finally:
        saver.close()


# ---- a thread survives a kill --------------------------------------------------------------
CHILD = """
import os, signal, sys
from typing import TypedDict
from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer
from langgraph.graph import END, START, StateGraph

url, prefix, log, mode = sys.argv[1:5]

class S(TypedDict):
    trail: str

def node(name):
    def run(state):
        with open(log, "a") as f:
            f.write(name + "\\n")
        if name == "c" and not os.path.exists(log + ".killed"):
            open(log + ".killed", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return {"trail": state["trail"] + name}
    return run

b = StateGraph(S)
prev = START
for n in "abcd":
    b.add_node(n, node(n))
    b.add_edge(prev, n)
    prev = n
b.add_edge(prev, END)
saver = DurableCheckpointer(Ledger.from_url(url, prefix=prefix))
graph = b.compile(checkpointer=saver)
config = {"configurable": {"thread_id": "crash-thread"}}
state = graph.get_state(config)
inputs = None if state.next else {"trail": ""}
out = graph.invoke(inputs, config, durability=mode)
print("RESULT", out["trail"])
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_lg_checkpointer_thread_survives_kill(redis_url: str, prefix: str, tmp_path: Path,
                                             mode: str) -> None:
    log = tmp_path / "effects.log"
    first = run_child(CHILD, redis_url, prefix, str(log), mode)
    assert killed(first), first.stderr[-2000:]
    assert log.read_text().split() == ["a", "b", "c"]
    second = run_child(CHILD, redis_url, prefix, str(log), mode)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "RESULT abcd" in second.stdout
    runs = log.read_text().split()
    if mode == "sync":
        # Every superstep's checkpoint was saved before the next began: only the node that
        # was killed runs again.
        assert runs == ["a", "b", "c", "c", "d"]
    else:
        # durability="async" saves in the background, so the last checkpoint saved before
        # the kill may be a step or two behind: the second process resumes from it and runs
        # the rest in order, each node once.
        assert runs[:3] == ["a", "b", "c"]
        assert runs[3:] in (["a", "b", "c", "d"], ["b", "c", "d"], ["c", "d"]), runs


def test_lg_checkpointer_unique_thread_ids_do_not_collide(saver: DurableCheckpointer) -> None:
    graph = chat_graph(saver)
    a, b = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    graph.invoke(human(0), cfg(a))
    graph.invoke(human(1), cfg(b))
    assert texts(graph.get_state(cfg(a))) == expected_texts(1)
    assert texts(graph.get_state(cfg(b)))[0] == "question 1"


# ---- subgraphs, fan-out, interrupts ------------------------------------------------------
class Fan(TypedDict):
    items: Annotated[list[str], operator.add]


def test_lg_checkpointer_subgraph_and_send_fanout(saver: DurableCheckpointer,
                                                 ledger: Ledger) -> None:
    inner = StateGraph(Fan)
    inner.add_node("inner", lambda s: {"items": ["inner"]})
    inner.add_edge(START, "inner")
    inner.add_edge("inner", END)

    outer = StateGraph(Fan)
    outer.add_node("sub", inner.compile())
    outer.add_node("worker", lambda s: {"items": [f"w{s['items'][-1]}"]})
    outer.add_edge(START, "sub")
    outer.add_conditional_edges("sub", lambda s: [Send("worker", {"items": [str(i)]})
                                                  for i in range(3)])
    outer.add_edge("worker", END)
    graph = outer.compile(checkpointer=saver)
    out = graph.invoke({"items": ["start"]}, cfg("t-sub"))
    # The same graph on LangGraph's own InMemorySaver gives the same state.
    expected = outer.compile(checkpointer=InMemorySaver()).invoke({"items": ["start"]},
                                                                  cfg("t-sub"))
    assert out == expected and "inner" in out["items"]
    assert sorted(i for i in out["items"] if i.startswith("w")) == ["w0", "w1", "w2"]
    fresh = outer.compile(checkpointer=DurableCheckpointer(ledger))
    assert fresh.get_state(cfg("t-sub")).values == out
    namespaces = {t.config["configurable"]["checkpoint_ns"]
                  for t in saver.list({"configurable": {"thread_id": "t-sub"}})}
    assert "" in namespaces


def test_lg_checkpointer_interrupt_then_resume(saver: DurableCheckpointer,
                                              ledger: Ledger) -> None:
    class Ask(TypedDict):
        answer: str

    def ask(state: Ask) -> dict[str, Any]:
        return {"answer": interrupt({"question": "ship it?"})}

    b = StateGraph(Ask)
    b.add_node("ask", ask)
    b.add_edge(START, "ask")
    b.add_edge("ask", END)
    graph = b.compile(checkpointer=saver)
    first = graph.invoke({"answer": ""}, cfg("t-int"))
    assert first["__interrupt__"][0].value == {"question": "ship it?"}
    # Another process (a fresh checkpointer) resumes the thread.
    again = b.compile(checkpointer=DurableCheckpointer(ledger))
    assert again.get_state(cfg("t-int")).next == ("ask",)
    assert again.invoke(Command(resume="yes"), cfg("t-int")) == {"answer": "yes"}


# ---- the delta encoding, property-based --------------------------------------------------
_edits = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.text(max_size=5), min_size=0, max_size=3)),
        st.tuples(st.just("replace"), st.integers(0, 10), st.text(max_size=5)),
        st.tuples(st.just("drop"), st.integers(0, 10)),
        st.tuples(st.just("fork"), st.integers(0, 10)),
    ),
    min_size=1, max_size=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_edits)
def test_lg_checkpointer_list_versions_read_back_exactly(ledger: Ledger, edits: list[Any]) -> None:
    # Appends are stored as deltas, anything else whole; forks continue from an older
    # checkpoint. Every checkpoint must read back exactly what was put, from a cold cache too.
    saver = DurableCheckpointer(ledger)
    thread = f"prop-{uuid.uuid4().hex}"
    history: list[tuple[Any, list[str]]] = []
    value: list[str] = []
    parent = cfg(thread, checkpoint_ns="")
    version = None
    for edit in edits:
        if edit[0] == "append":
            value = value + edit[1]
        elif edit[0] == "replace" and value:
            value = [*value]
            value[edit[1] % len(value)] = edit[2]
        elif edit[0] == "drop" and value:
            value = [v for i, v in enumerate(value) if i != edit[1] % len(value)]
        elif edit[0] == "fork" and history:
            parent, value = history[edit[1] % len(history)]
            saver.get_tuple(parent)  # LangGraph reads the checkpoint it continues from
        version = saver.get_next_version(version, None)
        ck = {**empty_checkpoint(), "channel_values": {"messages": list(value)},
              "channel_versions": {"messages": version}}
        parent = saver.put(parent, ck, {"step": len(history)}, {"messages": version})
        history.append((parent, list(value)))
    cold = DurableCheckpointer(ledger)
    for config, expected in history:
        for reader in (saver, cold):
            got = reader.get_tuple(config)
            assert got is not None
            assert got.checkpoint["channel_values"]["messages"] == expected
    saver.delete_thread(thread)


STRICT_CHILD = """
import sys
from typing import Annotated, TypedDict
from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]

b = StateGraph(Chat)
b.add_node("reply", lambda s: {"messages": [AIMessage(content="hi", id="a1")]})
b.add_edge(START, "reply")
b.add_edge("reply", END)
saver = DurableCheckpointer(Ledger.from_url(sys.argv[1], prefix=sys.argv[2]))
graph = b.compile(checkpointer=saver)
config = {"configurable": {"thread_id": "strict"}}
if sys.argv[3] == "write":
    graph.invoke({"messages": [HumanMessage(content="q", id="h1")]}, config)
else:
    msgs = graph.get_state(config).values["messages"]
    print("TYPES", [type(m).__name__ for m in msgs])
"""


def test_lg_checkpointer_strict_msgpack_allowlist(redis_url: str, prefix: str) -> None:
    # With LangGraph's allow-list on, messages still come back as message objects.
    env = {"LANGGRAPH_STRICT_MSGPACK": "true"}
    wrote = run_child(STRICT_CHILD, redis_url, prefix, "write", env=env)
    assert wrote.returncode == 0, wrote.stderr[-2000:]
    read = run_child(STRICT_CHILD, redis_url, prefix, "read", env=env)
    assert read.returncode == 0, read.stderr[-2000:]
    assert "TYPES ['HumanMessage', 'AIMessage']" in read.stdout


def test_lg_checkpointer_redis_down_fails_closed(own_redis: RedisServer) -> None:
    # No retries on this client, so the outage shows at once; the other savers of the suite
    # use the ledger's own client, which rides out a restart.
    ledger = Ledger(redis.Redis.from_url(own_redis.url), prefix="down")
    saver = DurableCheckpointer(ledger)
    graph = chat_graph(saver)
    graph.invoke(human(0), cfg("t-down"))
    own_redis.kill()
    with pytest.raises(LedgerUnavailableError):
        graph.invoke(human(1), cfg("t-down"))
    with pytest.raises(LedgerUnavailableError):
        saver.put(cfg("t-down", checkpoint_ns=""), empty_checkpoint(), {}, {})
    own_redis.start()  # same directory: the append-only file (fsync always) comes back
    assert texts(graph.get_state(cfg("t-down"))) == expected_texts(1)
    graph.invoke(human(1), cfg("t-down"))
    assert texts(graph.get_state(cfg("t-down"))) == expected_texts(2)
    ledger.redis.close()
