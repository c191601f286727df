"""``agentledger._nodes.pack``: hiredis's packer gives the bytes redis-py's own packers give."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from agentledger._nodes import pack

COMMANDS: list[tuple[Any, ...]] = [
    ("CLIENT", "REPLY", "OFF"),
    ("EVALSHA", "a" * 40, 2, "p:{run}:run", "p:{run}:steps", "step#1", 17, "é ✓ text",
     b"\x00\xff bytes", 0.1, 1e20, -3, 10**30, ""),
    ("ZADD", "p:runs", 1764650000123, "run-1"),
]


@pytest.mark.parametrize("connection", [redis.Connection, aredis.Connection])
def test_same_bytes_as_redis_py(connection: Any) -> None:
    conn = connection()  # never connected: packing only
    ours = b"".join(pack(conn, COMMANDS))
    theirs = b"".join(b"".join(conn.pack_command(*c)) for c in COMMANDS)
    assert ours == theirs


@pytest.mark.parametrize("connection", [redis.Connection, aredis.Connection])
def test_a_value_hiredis_refuses_gets_redis_pys_error(connection: Any) -> None:
    with pytest.raises(redis.DataError):
        pack(connection(), [("SET", "k", True)])


def test_another_encoding_uses_the_connections_packer() -> None:
    conn = redis.Connection(encoding="latin-1")
    assert b"".join(pack(conn, [("SET", "k", "é")])) == b"".join(conn.pack_command("SET", "k",
                                                                                    "é"))
