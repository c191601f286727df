"""The checkpointer loads only allow-listed types: a blob written into Redis that names a callable
(``os.system``) is refused with an error naming the key and the type, and runs nothing."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, TypedDict

import ormsgpack
import pytest
import redis
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from agentledger import CorruptRecordError, Ledger, UnsupportedTypeError
from agentledger.langgraph import DurableCheckpointer

US = b"\x1f"


class Mood(enum.Enum):
    CALM = "calm"


class Ticket(BaseModel):
    number: int
    mood: Mood


class Note(TypedDict, total=False):
    note: Any


def _graph(saver: DurableCheckpointer, value: Any) -> Any:
    b = StateGraph(Note)
    b.add_node("write", lambda state: {"note": value})
    b.add_edge(START, "write")
    b.add_edge("write", END)
    return b.compile(checkpointer=saver)


def _cfg(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


def _ext(code: int, *parts: Any) -> ormsgpack.Ext:
    return ormsgpack.Ext(code, ormsgpack.packb(list(parts)))


def _plant(client: redis.Redis, prefix: str, thread: str, payload: Any) -> str:
    """Overwrite the stored value of the ``note`` channel with ``payload`` (msgpack)."""
    key = f"{prefix}:{{{thread}}}:lg:blobs"
    fields = [f for f in client.hkeys(key) if US + b"note" + US in f]
    assert fields
    for f in fields:
        client.hset(key, f, b"msgpack" + US + ormsgpack.packb(payload))
    return key


@pytest.fixture
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_blob_naming_a_callable_runs_nothing(
        ledger: Ledger, client: redis.Redis, prefix: str, tmp_path: Path, mode: str) -> None:
    marker = tmp_path / "pwned"
    graph = _graph(DurableCheckpointer(ledger), "hello")
    graph.invoke({}, _cfg("t-evil"))
    # (module, name, arg) of LangGraph's single-argument constructor extension, and the same
    # hidden one level down inside an allowed type's arguments.
    for payload in (_ext(0, "os", "system", f"touch {marker}"),
                    {"x": [_ext(1, "builtins", "set", [[_ext(0, "os", "system",
                                                               f"touch {marker}")]])]}):
        key = _plant(client, prefix, "t-evil", payload)
        # A fresh process reading the thread (no cached state).
        reader = _graph(DurableCheckpointer(ledger), "hello")
        error: CorruptRecordError | None = None
        try:
            if mode == "sync":
                reader.get_state(_cfg("t-evil"))
            else:
                await reader.aget_state(_cfg("t-evil"))
        except CorruptRecordError as e:
            error = e
        assert not marker.exists(), "the blob ran a command"
        assert error is not None and error.key == key
        assert "os.system" in str(error)


def test_a_pending_write_naming_a_callable_runs_nothing(
        ledger: Ledger, client: redis.Redis, prefix: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    saver = DurableCheckpointer(ledger)
    graph = _graph(saver, "hello")
    graph.invoke({}, _cfg("t-w"))
    conf = saver.get_tuple(_cfg("t-w")).config  # type: ignore[union-attr]
    saver.put_writes(conf, [("note", "x")], "task-1")
    key = f"{prefix}:{{t-w}}:lg:writes"
    for f, raw in client.hgetall(key).items():
        channel, _, _, path = ormsgpack.unpackb(raw)
        client.hset(key, f, ormsgpack.packb(
            [channel, "msgpack", ormsgpack.packb(_ext(0, "os", "system", f"touch {marker}")),
             path]))
    error: CorruptRecordError | None = None
    try:
        DurableCheckpointer(ledger).get_tuple(_cfg("t-w"))
    except CorruptRecordError as e:
        error = e
    assert not marker.exists(), "the write ran a command"
    assert error is not None and error.key == key and "os.system" in str(error)


def test_other_serializations_are_refused(ledger: Ledger, client: redis.Redis,
                                          prefix: str) -> None:
    graph = _graph(DurableCheckpointer(ledger), "hello")
    graph.invoke({}, _cfg("t-json"))
    key = f"{prefix}:{{t-json}}:lg:blobs"
    for f in client.hkeys(key):
        if US + b"note" + US in f:
            client.hset(key, f, b"json" + US + b'{"lc": 2, "type": "constructor", '
                        b'"id": ["os", "system"], "args": ["true"]}')
    with pytest.raises(CorruptRecordError, match="json"):
        graph.get_state(_cfg("t-json"))


def test_registered_types_round_trip_and_others_fail_at_the_write(ledger: Ledger) -> None:
    ticket = Ticket(number=7, mood=Mood.CALM)
    saver = DurableCheckpointer(ledger, allowed_types=[Ticket, Mood])
    graph = _graph(saver, ticket)
    graph.invoke({}, _cfg("t-reg"))
    assert _graph(DurableCheckpointer(ledger, allowed_types=[Ticket, Mood]), None).get_state(
        _cfg("t-reg")).values["note"] == ticket
    # Not registered: the write fails at once, naming the type, instead of at the resume.
    with pytest.raises(UnsupportedTypeError, match="Ticket"):
        _graph(DurableCheckpointer(ledger), ticket).invoke({}, _cfg("t-unreg"))


def test_state_of_langgraph_and_langchain_types_round_trips(ledger: Ledger) -> None:
    import datetime as dt
    import uuid

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.types import Send

    value = {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "id": uuid.UUID(int=5),
             "tags": {"a", "b"}, "day": dt.date(2026, 1, 2), "span": dt.timedelta(seconds=3),
             "msgs": [HumanMessage("hi", id="h"), AIMessage("yo", id="a"),
                      ToolMessage("ok", tool_call_id="c1", id="t")],
             "send": Send("node", {"x": 1})}
    _graph(DurableCheckpointer(ledger), value).invoke({}, _cfg("t-lg"))
    assert _graph(DurableCheckpointer(ledger), None).get_state(
        _cfg("t-lg")).values["note"] == value


def test_langgraph_strict_mode_adds_the_state_schemas_types(redis_url: str, prefix: str) -> None:
    # LANGGRAPH_STRICT_MSGPACK=true: compile() hands the schema's types to with_allowlist.
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import enum
        from typing import TypedDict
        from pydantic import BaseModel
        from agentledger import Ledger
        from agentledger.langgraph import DurableCheckpointer
        from langgraph.graph import StateGraph, START, END

        class Mood(enum.Enum):
            CALM = "calm"

        class Ticket(BaseModel):
            number: int
            mood: Mood

        class S(TypedDict, total=False):
            ticket: Ticket

        def graph():
            b = StateGraph(S)
            b.add_node("w", lambda s: {{"ticket": Ticket(number=3, mood=Mood.CALM)}})
            b.add_edge(START, "w")
            b.add_edge("w", END)
            return b.compile(checkpointer=DurableCheckpointer(
                Ledger.from_url({redis_url!r}, prefix={prefix!r})))

        cfg = {{"configurable": {{"thread_id": "t-strict"}}}}
        graph().invoke({{}}, cfg)
        print(graph().get_state(cfg).values["ticket"])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "LANGGRAPH_STRICT_MSGPACK": "true"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "number=3 mood=<Mood.CALM: 'calm'>"
