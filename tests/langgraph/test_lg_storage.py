"""Storage grows with what was said (DESIGN guarantee 8): a 200-turn conversation, one
200-character reply per turn, stored by DurableCheckpointer and by SqliteSaver."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Any, TypedDict

import redis
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer

REPLY = 200


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _reply(state: Chat) -> dict[str, Any]:
    n = len(state["messages"])
    text = (f"reply {n}: " + "lorem ipsum dolor sit amet " * 10)[:REPLY]
    return {"messages": [AIMessage(content=text, id=f"ai-{n}")]}


def converse(saver: BaseCheckpointSaver[Any], thread: str, turns: range) -> Any:
    b = StateGraph(Chat)
    b.add_node("reply", _reply)
    b.add_edge(START, "reply")
    b.add_edge("reply", END)
    graph = b.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": thread}}
    for i in turns:
        graph.invoke({"messages": [HumanMessage(content=f"question {i}", id=f"h-{i}")]}, config)
    return graph


def redis_bytes(client: redis.Redis, prefix: str, thread: str) -> tuple[int, int]:
    """(MEMORY USAGE of the thread's keys, bytes of their fields, values and members)."""
    memory = payload = 0
    for key in client.scan_iter(match=f"{prefix}:{{{thread}}}:*"):
        memory += int(client.memory_usage(key, samples=0) or 0)
        kind = client.type(key)
        if kind == b"hash":
            payload += sum(len(f) + len(v) for f, v in client.hgetall(key).items())
        elif kind == b"zset":
            payload += sum(len(m) for m in client.zrange(key, 0, -1))
        elif kind == b"set":
            payload += sum(len(m) for m in client.smembers(key))
    return memory, payload


def sqlite_bytes(path: Path) -> tuple[int, int]:
    """(file size, bytes of the stored checkpoints, metadata and writes)."""
    with sqlite3.connect(path) as conn:
        cp = conn.execute("SELECT SUM(LENGTH(checkpoint) + LENGTH(metadata)) FROM checkpoints"
                          ).fetchone()[0]
        wr = conn.execute("SELECT SUM(LENGTH(value)) FROM writes").fetchone()[0]
    return path.stat().st_size, int(cp or 0) + int(wr or 0)


def test_lg_storage_linear_and_a_tenth_of_sqlite(ledger: Ledger, redis_url: str, prefix: str,
                                                 tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    saver = DurableCheckpointer(ledger)
    converse(saver, "chat", range(100))
    mem_100, payload_100 = redis_bytes(client, prefix, "chat")
    graph = converse(saver, "chat", range(100, 200))
    mem_200, payload_200 = redis_bytes(client, prefix, "chat")

    db = tmp_path / "chat.sqlite"
    conn = sqlite3.connect(db, check_same_thread=False)
    sqlite_saver = SqliteSaver(conn)
    converse(sqlite_saver, "chat", range(100))
    conn.commit()
    _, sq_payload_100 = sqlite_bytes(db)
    converse(sqlite_saver, "chat", range(100, 200))
    conn.commit()
    sq_file_200, sq_payload_200 = sqlite_bytes(db)
    conn.close()

    print(f"\n200 turns: DurableCheckpointer {mem_200} B (MEMORY USAGE), {payload_200} B payload;"
          f" SqliteSaver {sq_file_200} B file, {sq_payload_200} B payload;"
          f" ratio {mem_200 / sq_payload_200:.4f}")
    print(f"100 -> 200 turns: DurableCheckpointer x{mem_200 / mem_100:.2f} (payload "
          f"x{payload_200 / payload_100:.2f}); SqliteSaver x{sq_payload_200 / sq_payload_100:.2f}")

    # At most a tenth of what SqliteSaver stores for the same conversation.
    assert mem_200 * 10 <= sq_payload_200
    assert payload_200 * 10 <= sq_payload_200
    # Linear: doubling the conversation doubles the bytes (quadratic would be ~4x).
    assert 1.7 <= payload_200 / payload_100 <= 2.3
    assert mem_200 / mem_100 <= 2.4
    # And nothing was lost: a fresh checkpointer reads all 400 messages back.
    state = converse(DurableCheckpointer(ledger), "chat", range(0)).get_state(
        {"configurable": {"thread_id": "chat"}})
    got = state.values["messages"]
    assert len(got) == 400
    assert got == graph.get_state({"configurable": {"thread_id": "chat"}}).values["messages"]
    assert got[-1].content.startswith("reply 399: ") and len(got[-1].content) == REPLY
    client.close()
