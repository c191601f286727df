"""``agentledger._nodes.pack``: hiredis's packer gives the bytes redis-py's own packers give;
``asend_packed`` writes them as ``send_packed_command`` would, errors included."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from _support import RedisServer
from agentledger._nodes import asend_packed, pack

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


# ---- asend_packed: a write without redis-py's per-write task, with the same errors ----------
async def _connected(url: str, **kw: Any) -> Any:
    client = aredis.Redis.from_url(url, socket_timeout=kw.pop("socket_timeout", 5), **kw)
    conn = await client.connection_pool.get_connection()
    await conn.connect()
    return client, conn


async def test_a_write_reaches_redis_in_order(redis_url: str) -> None:
    client, conn = await _connected(redis_url)
    key = f"pack-test:{id(conn)}"
    await asend_packed(conn, pack(conn, [("RPUSH", key, "a"), ("RPUSH", key, "b")]),
                       check_health=False)
    assert [await conn.read_response(), await conn.read_response()] == [1, 2]
    assert await client.lrange(key, 0, -1) == [b"a", b"b"]
    await client.delete(key)
    await client.connection_pool.release(conn)
    await client.aclose()


async def test_a_closed_connection_raises_instead_of_dropping_the_write(redis_url: str) -> None:
    client, conn = await _connected(redis_url)
    conn._writer.transport.close()  # asyncio would drop a write to it without a word
    with pytest.raises(redis.ConnectionError):
        await asend_packed(conn, pack(conn, [("PING",)]), check_health=False)
    await client.aclose()


async def test_a_write_redis_does_not_take_is_bounded_by_the_socket_timeout(tmp_path: Any
                                                                            ) -> None:
    server = RedisServer(tmp_path, appendonly=False).start()
    assert server.proc is not None
    client, conn = await _connected(server.url, socket_timeout=0.5)
    server.proc.send_signal(signal.SIGSTOP)  # alive, reads nothing: the kernel buffers fill
    try:
        big = "x" * (32 << 20)
        with pytest.raises(redis.TimeoutError):
            await asend_packed(conn, pack(conn, [("SET", "big", big)]), check_health=False)
        assert not conn.is_connected  # half a command went out: never used again
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.kill()
        await client.aclose()


async def test_a_write_to_a_killed_server_raises_never_returns_as_sent(tmp_path: Any) -> None:
    server = RedisServer(tmp_path, appendonly=False).start()
    client, conn = await _connected(server.url)
    server.kill()  # its socket is gone: a send fails (reset or broken pipe) in the write
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(redis.ConnectionError):
            for _ in range(20):  # the first write may still go into the kernel
                await asend_packed(conn, pack(conn, [("SET", "k", "v")]), check_health=False)
                # Returned: then the transport took the bytes and is still open.
                assert not conn._writer.transport.is_closing()
                await asyncio.sleep(0.01)
        assert not conn.is_connected
    finally:
        await client.aclose()


async def test_a_write_cancelled_half_way_drops_the_connection(tmp_path: Any) -> None:
    server = RedisServer(tmp_path, appendonly=False).start()
    assert server.proc is not None
    client, conn = await _connected(server.url, socket_timeout=30)
    server.proc.send_signal(signal.SIGSTOP)
    try:
        write = asyncio.ensure_future(asend_packed(
            conn, pack(conn, [("SET", "big", "x" * (32 << 20))]), check_health=False))
        await asyncio.sleep(0.3)
        assert not write.done()  # waiting for Redis to take the rest
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert not conn.is_connected  # half a command went out: never used again
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.kill()
        await client.aclose()
