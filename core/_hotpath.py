"""The hot path's own Redis connection.

Every tool and LLM call costs one or two script calls. Through the client, each call also pays
for redis-py's per-command layers (pool checkout and release, retry wrapper, instrumentation):
about as much as the round trip itself. A run session keeps one pooled connection for its step
scripts and sends EVALSHA on it directly; a second thread or task that finds it busy uses the
client as usual, so parallel tool calls never wait on each other.

At the ``async`` durability level (docs/durability.md) a record whose loss a re-run repairs is
*sent* and its reply read later, at the next barrier. Redis applies and logs one connection's
commands in order, so whatever a crash loses is a suffix of what was sent. That only holds
while every record of the session goes over this one connection: at ``async`` a caller that
finds it busy waits for it instead of using the client, and a broken connection with replies
still unread is an error at the barrier, never silently reconnected.

On a Redis Cluster the connection goes to the master owning the run's slot (every key of a run
shares its hash tag), so a run's records reach one node in order and a ``WAIT`` after them
counts them (:mod:`agentledger._nodes`). A failover (connection lost, MOVED, ...) during a
synchronous record re-reads the slot map and sends the record again to the new owner: the
claim and complete scripts are fenced and idempotent under one fencing token (a repeated claim
finds its own attempt, a repeated complete finds its own outcome), so a record that did reach
the old master, and its replica, is not applied twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError, ResponseError

from ._connect import ledger_error
from ._errors import LedgerError
from ._nodes import (
    SLOT_MOVED,
    aexchange,
    aowner_connection,
    arefresh_slots,
    arelease,
    as_cluster,
    exchange,
    owner_connection,
    refresh_slots,
)

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["DURABILITY_LEVELS", "StepConnection"]

DURABILITY_LEVELS = ("sync", "async", "exit")
OnReply = Callable[[Any], None]


class _Pending:
    """Records sent on one connection whose replies are not read yet."""

    __slots__ = ("bytes", "items", "waited")

    def __init__(self) -> None:
        # (script name, keys, args, what to do with the reply)
        self.items: list[tuple[str, list[str], list[Any], OnReply]] = []
        self.bytes = 0
        self.waited = True  # False: writes since the last WAIT (durability "replicated")

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0


def _size(keys: list[str], args: list[str | bytes]) -> int:
    return sum(map(len, keys)) + sum(map(len, args))  # the step scripts' arguments: all text


class StepConnection:
    """One session's connection for step scripts (sync and asyncio)."""

    def __init__(self, ledger: Ledger, route_key: str | None = None) -> None:
        self._ledger = ledger
        # On a cluster: the key whose slot's master takes the records (the run's hash tag);
        # without one, a cluster session uses the client.
        self._route_key = route_key
        self._enabled = route_key is not None or not ledger.cluster
        self.pipelined = self._enabled and ledger.durability != "sync"
        # Records sent from asyncio are read at an asyncio barrier; a run opened with the
        # synchronous API ends with a synchronous one, so there they are acknowledged at once.
        self.opened_async = False
        self._conn: Any = None
        self._pool: Any = None  # the pool self._conn goes back to (a cluster node's own)
        self._lock = threading.Lock()
        self._pending = _Pending()
        self._aconn: Any = None
        self._anode: Any = None  # a cluster node: the owner of self._aconn
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._alock: asyncio.Lock | None = None
        self._apending = _Pending()

    def set_level(self, level: str) -> None:
        """This session's durability level (before it records anything)."""
        if level not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, not {level!r}")
        if self._pending.items or self._apending.items:
            raise RuntimeError("the durability level is chosen before the first record")
        self.pipelined = self._enabled and level != "sync"

    def swap_level(self, level: str) -> bool:
        """Record at ``level`` from now on, mid-run (an adapter's own level inside a run opened
        elsewhere); returns the previous setting for :meth:`restore_level`. Records sent before
        keep theirs: the next acknowledged record (or barrier) acknowledges them first, and a
        record is never sent around them (see ``_take``)."""
        if level not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, not {level!r}")
        before = self.pipelined
        self.pipelined = self._enabled and level != "sync"
        return before

    def restore_level(self, before: bool) -> None:
        self.pipelined = before

    @property
    def unacknowledged(self) -> int:
        """How many records were sent and not acknowledged yet."""
        return len(self._pending.items) + len(self._apending.items)

    # ---- sync -------------------------------------------------------------------------------
    def _take(self) -> bool:
        # At "async" every record goes over this connection, in order: wait for it (so too
        # while records sent at "async" are unacknowledged, after a switch to "sync").
        return self._lock.acquire(blocking=self.pipelined or bool(self._pending.items))

    def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Send a script and wait for its reply (after every record sent before it)."""
        if not self._enabled or not self._take():
            return self._ledger.script(name, keys, args)
        try:
            self._drain()
            sha, source = self._ledger._scripts[name].sha, self._ledger._scripts[name].script
            commands: list[tuple[Any, ...]] = [("EVALSHA", sha, len(keys), *keys, *args)]
            if self._ledger.wait_replicas:  # on this connection: WAIT counts its writes
                commands.append(self._ledger.wait_command())

            def send() -> list[Any]:
                conn = self._connection()
                replies = exchange(conn, commands)  # the record and its WAIT: one round trip
                if isinstance(replies[0], NoScriptError):  # a restarted Redis forgot its scripts
                    exchange(conn, [("SCRIPT", "LOAD", source)])
                    replies = exchange(conn, commands)
                if isinstance(replies[0], SLOT_MOVED):  # not run: the slot is elsewhere now
                    raise replies[0]
                return replies

            replies = self._retry().call_with_retry(send, self._lost)
            if isinstance(replies[0], Exception):
                raise replies[0]
            if self._ledger.wait_replicas:
                self._ledger.check_replicated(replies[1], f"the {name} script")
            return replies[0]
        except redis.RedisError as e:
            raise ledger_error(e, self._ledger.url, f"the {name} script") from e
        finally:
            self._lock.release()

    def _lost(self, _error: Exception) -> None:
        """The connection failed or its node no longer owns the slot: on a cluster, re-read the
        slot map, and take the next connection from the slot's owner then."""
        if self._conn is not None:
            self._conn.disconnect()
        if self._route_key is not None and self._ledger.cluster:
            self._release()
            refresh_slots(as_cluster(self._ledger.redis))

    def _connection(self) -> Any:
        if self._conn is None:
            if self._route_key is not None and self._ledger.cluster:
                self._conn, self._pool = owner_connection(as_cluster(self._ledger.redis),
                                                          self._route_key)
            else:
                self._pool = self._ledger.redis.connection_pool
                self._conn = self._pool.get_connection()
        return self._conn

    def _release(self) -> None:
        if self._conn is not None:
            self._pool.release(self._conn)
            self._conn = self._pool = None

    def send(self, name: str, keys: list[str], args: list[Any], on_reply: OnReply,
             defer: bool = False) -> None:
        """Write a record to the socket and return; ``on_reply`` runs at the next barrier
        (its exception is raised there). Falls back to :meth:`call` at ``sync``, unless
        ``defer``: a write that needs no acknowledgement of its own even at ``sync``, because
        the next acknowledged call on this connection (or the end of the run) reads it."""
        if not (self.pipelined or (defer and self._enabled)):
            on_reply(self.call(name, keys, args))
            return
        with self._lock:
            pending = self._pending
            try:
                conn = self._connection()
                # EVAL with the source, not EVALSHA: a Redis that restarted or flushed its
                # scripts cannot refuse one record (NOSCRIPT) and apply the next.
                # send_command writes with sendall: in the kernel before it returns (a reset
                # connection can still lose it: docs/durability.md).
                conn.send_command("EVAL", self._ledger._scripts[name].script, len(keys), *keys,
                                  *args, check_health=False)
            except redis.RedisError as e:
                pending.clear()  # what was sent before is of unknown fate: fail closed
                pending.waited = True  # (reported here: no WAIT on a connection that lost it)
                self._lost(e)
                raise ledger_error(e, self._ledger.url, f"the {name} script") from e
            pending.items.append((name, keys, args, on_reply))
            pending.bytes += _size(keys, args)
            pending.waited = False
            if (len(pending.items) >= self._ledger.max_unacked_records
                    or pending.bytes >= self._ledger.max_unacked_bytes):
                self._drain()

    def barrier(self) -> None:
        """Wait until every record sent so far is acknowledged; raise the first error."""
        if self._apending.items:
            raise LedgerError("step records sent from asyncio are not acknowledged yet and a "
                              "synchronous barrier cannot read them: end the run with afinish "
                              "(or record this run at durability 'sync')")
        if self._pending.items or not self._pending.waited:
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        pending = self._pending
        if not pending.items and pending.waited:
            return
        conn = self._conn
        first: BaseException | None = None
        moved = False
        items = list(pending.items)
        pending.clear()
        try:
            for name, _keys, _args, on_reply in items:
                try:
                    reply = conn.read_response()
                except ResponseError as e:  # refused (OOM, ...): what follows is read too
                    first = first or ledger_error(e, self._ledger.url, f"the {name} script")
                    moved = moved or isinstance(e, SLOT_MOVED)
                    continue
                if first is None:
                    try:
                        on_reply(reply)
                    except Exception as e:  # the record's own verdict (fenced out, ...)
                        first = e
            if self._ledger.wait_replicas and not pending.waited:
                conn.send_command(*self._ledger.wait_command())
                self._ledger.check_replicated(conn.read_response(), "the step records")
            pending.waited = True
            if moved:  # the slot moved (a failover): the next record goes to its new owner
                self._lost(first)  # type: ignore[arg-type]
        except redis.RedisError as e:
            self._lost(e)  # replies unread: the connection is out of step
            pending.waited = True
            raise ledger_error(e, self._ledger.url, "the step records") from e
        except LedgerError:
            pending.waited = True
            raise
        if first is not None:
            raise first

    def _retry(self) -> Any:
        return self._ledger.cluster_retry()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                if self._pending.items:  # replies never read: do not hand it to the pool
                    self._conn.disconnect()
                    self._pending.clear()
                self._release()

    # ---- asyncio ----------------------------------------------------------------------------
    def _alock_for(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock | None:
        if self._aloop is None:
            self._aloop, self._alock = loop, asyncio.Lock()
        return self._alock if loop is self._aloop else None

    async def acall(self, name: str, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        lock = self._alock_for(loop)
        # Another loop, or the connection busy with a concurrent task: use the client
        # (at "async", wait for it: one connection keeps the records in order).
        if not self._enabled or lock is None or (lock.locked() and not self.pipelined
                                                 and not self._apending.items):
            return await self._ledger.ascript(name, keys, args)
        async with lock:
            scripts = self._ledger._async()[1]
            try:
                await self._adrain()
                sha, source = scripts[name].sha, scripts[name].script
                commands: list[tuple[Any, ...]] = [("EVALSHA", sha, len(keys), *keys, *args)]
                if self._ledger.wait_replicas:
                    commands.append(self._ledger.wait_command())

                async def send() -> list[Any]:
                    conn = await self._aconnection()
                    replies = await aexchange(conn, commands)
                    if isinstance(replies[0], NoScriptError):
                        await aexchange(conn, [("SCRIPT", "LOAD", source)])
                        replies = await aexchange(conn, commands)
                    if isinstance(replies[0], SLOT_MOVED):
                        raise replies[0]
                    return replies

                replies = await self._ledger.acluster_retry().call_with_retry(send, self._alost)
                if isinstance(replies[0], Exception):
                    raise replies[0]
                if self._ledger.wait_replicas:
                    self._ledger.check_replicated(replies[1], f"the {name} script")
                return replies[0]
            except redis.RedisError as e:
                raise ledger_error(e, self._ledger.url, f"the {name} script") from e

    async def _alost(self, _error: Exception) -> None:
        if self._aconn is not None:
            await self._aconn.disconnect()
        if self._route_key is not None and self._ledger.cluster:
            self._arelease()
            await arefresh_slots(self._ledger._async()[0])  # type: ignore[arg-type]

    async def _aconnection(self) -> Any:
        if self._aconn is None:
            client: Any = self._ledger._async()[0]
            if self._route_key is not None and self._ledger.cluster:
                self._aconn, self._anode = await aowner_connection(client, self._route_key)
            else:
                self._aconn = await client.connection_pool.get_connection()
        return self._aconn

    def _arelease(self) -> None:
        if self._aconn is not None and self._anode is not None:
            arelease(self._anode, self._aconn)
        self._aconn = self._anode = None

    async def asend(self, name: str, keys: list[str], args: list[Any], on_reply: OnReply,
                    defer: bool = False) -> None:
        loop = asyncio.get_running_loop()
        lock = self._alock_for(loop)
        pipelined = self.pipelined or (defer and self._enabled)
        if not (pipelined and self.opened_async) or lock is None:
            on_reply(await self.acall(name, keys, args))
            return
        async with lock:
            pending = self._apending
            try:
                conn = await self._aconnection()
                if not conn.is_connected:
                    await conn.connect()
                # No bytes left in asyncio's buffer when a send returns (drain waits for an
                # empty buffer): what a SIGKILL can lose is then only what Redis drops unread.
                conn._writer.transport.set_write_buffer_limits(high=0)
                await conn.send_command("EVAL", self._ledger._scripts[name].script, len(keys),
                                        *keys, *args, check_health=False)
            except redis.RedisError as e:
                pending.clear()
                pending.waited = True
                await self._alost(e)
                raise ledger_error(e, self._ledger.url, f"the {name} script") from e
            pending.items.append((name, keys, args, on_reply))
            pending.bytes += _size(keys, args)
            pending.waited = False
            if (len(pending.items) >= self._ledger.max_unacked_records
                    or pending.bytes >= self._ledger.max_unacked_bytes):
                await self._adrain()

    async def abarrier(self) -> None:
        if self._pending.items or not self._pending.waited:  # sent from a thread: read them
            with self._lock:
                self._drain()
        if not (self._apending.items or not self._apending.waited):
            return
        lock = self._alock_for(asyncio.get_running_loop())
        if lock is None:
            return
        async with lock:
            await self._adrain()

    async def _adrain(self) -> None:
        pending = self._apending
        if not pending.items and pending.waited:
            return
        conn = self._aconn
        first: BaseException | None = None
        moved = False
        items = list(pending.items)
        pending.clear()
        try:
            for name, _keys, _args, on_reply in items:
                try:
                    reply = await conn.read_response()
                except ResponseError as e:
                    first = first or ledger_error(e, self._ledger.url, f"the {name} script")
                    moved = moved or isinstance(e, SLOT_MOVED)
                    continue
                if first is None:
                    try:
                        on_reply(reply)
                    except Exception as e:
                        first = e
            if self._ledger.wait_replicas and not pending.waited:
                await conn.send_command(*self._ledger.wait_command())
                self._ledger.check_replicated(await conn.read_response(), "the step records")
            pending.waited = True
            if moved:
                await self._alost(first)  # type: ignore[arg-type]
        except redis.RedisError as e:
            await self._alost(e)
            pending.waited = True
            raise ledger_error(e, self._ledger.url, "the step records") from e
        except LedgerError:
            pending.waited = True
            raise
        if first is not None:
            raise first

    async def aclose(self) -> None:
        if self._aconn is not None and self._aloop is asyncio.get_running_loop():
            if self._apending.items:
                await self._aconn.disconnect()
                self._apending.clear()
            if self._anode is not None:
                self._arelease()
            else:
                client: aredis.Redis = self._ledger._async()[0]
                await client.connection_pool.release(self._aconn)
        self._aconn = self._anode = None
        self.close()
