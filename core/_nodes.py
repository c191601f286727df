"""A connection to the master that owns a key's slot on a Redis Cluster (sync and asyncio).

``WAIT`` has no key and counts only the writes of the connection it is sent on, and redis-py's
cluster client picks a connection per command: a record and its ``WAIT`` must go over one
connection to the master owning the run's slot (all of a run's keys share the hash tag
``{run_id}``, :mod:`agentledger._keys`). That connection is taken here, from the node's own
pool; when the master dies or the slot moves (a failover: the connection is lost, or the node
answers MOVED / ASK / TRYAGAIN / CLUSTERDOWN), :func:`refresh_slots` asks the cluster for the
slot map again and the next connection goes to the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, cast

import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisClusterException,
    TryAgainError,
)

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py without its hiredis extra
    _hiredis_pack = None

__all__ = [
    "SLOT_MOVED",
    "aexchange",
    "aowner_connection",
    "arefresh_slots",
    "arelease",
    "as_cluster",
    "asend_packed",
    "exchange",
    "owner_connection",
    "pack",
    "refresh_slots",
]

# Replies that mean the node did not run the command because the slot's owner is elsewhere or
# changing (MovedError is an AskError): retried on the owner the refreshed slot map names.
SLOT_MOVED: tuple[type[redis.RedisError], ...] = (AskError, TryAgainError, ClusterDownError)


def _no_owner(key: str, e: Exception) -> redis.ConnectionError:
    # No node serves the slot in the map just read (a failover under way): an outage, tried
    # again like a lost connection.
    return redis.ConnectionError(f"no master serves the slot of {key!r} ({e})")


def owner_connection(client: RedisCluster, key: str) -> tuple[Any, Any]:
    """A connection to the master serving ``key``'s slot now, and the pool to release it to."""
    try:
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    except RedisClusterException as e:
        raise _no_owner(key, e) from e
    pool = client.get_redis_connection(node).connection_pool
    return pool.get_connection(), pool


def refresh_slots(client: RedisCluster) -> None:
    """Ask the cluster for its slot map again (after a failover: the new owners)."""
    # No node answers yet: the next attempt fails as well, and its retry ends it.
    with contextlib.suppress(redis.RedisError, RedisClusterException):
        client.nodes_manager.initialize()


async def aowner_connection(client: aredis.RedisCluster, key: str) -> tuple[Any, Any]:
    """:func:`owner_connection` for redis.asyncio: the connection and its node."""
    try:
        await client.initialize()  # the slot map is loaded on first use
        node = client.get_node_from_key(key)
    except RedisClusterException as e:
        raise _no_owner(key, e) from e
    if node is None:  # only with replica=True
        raise _no_owner(key, LookupError("no node"))
    return node.acquire_connection(), node


def arelease(node: Any, conn: Any) -> None:
    """Give an asyncio cluster node its connection back (redis-py before 6 has no
    ``ClusterNode.release``: its own commands append to the free list)."""
    release = getattr(node, "release", None)
    if release is not None:
        release(conn)
    else:
        node._free.append(conn)


async def arefresh_slots(client: aredis.RedisCluster) -> None:
    with contextlib.suppress(redis.RedisError, RedisClusterException):
        await client.nodes_manager.initialize()


def pack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """``commands`` in Redis's protocol, for ``send_packed_command``: hiredis's C packer
    where the connection encodes text as strict UTF-8 (redis-py's asyncio connection packs in
    Python: ~10x the CPU per record); else the connection's own packer."""
    encoder = conn.encoder
    if _hiredis_pack is not None and encoder.encoding == "utf-8" \
            and encoder.encoding_errors == "strict":
        try:
            return [b"".join([_hiredis_pack(command) for command in commands])]
        except TypeError:  # a value hiredis does not take: redis-py's error, from its packer
            pass
    return conn.pack_commands(commands)


def exchange(conn: Any, commands: list[tuple[Any, ...]], check_health: bool = True) -> list[Any]:
    """Send ``commands`` in one write and read every reply (one round trip). An error reply
    is returned in its place, not raised, so the connection stays in step. ``check_health``
    False on a connection whose replies are off (a health check's PING would get none)."""
    conn.send_packed_command(pack(conn, commands), check_health=check_health)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as e:
            replies.append(e)
    return replies


async def asend_packed(conn: Any, packed: list[bytes], check_health: bool = True) -> None:
    """``conn.send_packed_command(packed)`` without its cost on the hot path: with a socket
    timeout, redis-py bounds each write by ``asyncio.wait_for``, which on Python 3.11 runs the
    write in a task of its own (two more turns of the event loop per record). Here the bytes
    go to the transport at once and the write waits, bounded by the socket timeout, only when
    they did not all go into the kernel; a closed connection, a timeout, a failed or cancelled
    write disconnect it and raise as redis-py does."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected or (check_health and conn.health_check_interval):
        await conn.send_packed_command(packed, check_health=check_health)
        return
    if writer.transport.is_closing():  # asyncio would drop the bytes (3.11) or fail oddly (3.12)
        await conn.disconnect(nowait=True)
        raise redis.ConnectionError("Error while writing to socket: the connection is closed.")
    # write, not writelines: writelines on CPython 3.12.0-3.12.8 / 3.13.0-3.13.1 never
    # pauses the writer, so drain would not wait for the kernel (gh-127655).
    writer.write(packed[0] if len(packed) == 1 else b"".join(packed))
    transport = writer.transport
    if not transport.get_write_buffer_size() and not transport.is_closing():
        return
    try:
        async with asyncio.timeout(conn.socket_timeout):
            await writer.drain()
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise redis.TimeoutError("Timeout writing to socket") from None
    except OSError as e:
        await conn.disconnect(nowait=True)
        raise redis.ConnectionError(f"Error while writing to socket: {e}.") from e
    except BaseException:
        await conn.disconnect(nowait=True)  # cancelled mid-write: half a command may be out
        raise


async def aexchange(conn: Any, commands: list[tuple[Any, ...]], check_health: bool = True
                    ) -> list[Any]:
    await asend_packed(conn, pack(conn, commands), check_health=check_health)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await conn.read_response())
        except redis.ResponseError as e:
            replies.append(e)
    return replies


def as_cluster(client: Any) -> RedisCluster:
    return cast(RedisCluster, client)
