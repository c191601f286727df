"""The hot path's own Redis connection.

Every tool and LLM call costs one or two script calls. Through the client, each call also pays
for redis-py's per-command layers (pool checkout and release, retry wrapper, instrumentation):
about as much as the round trip itself. A run session keeps one pooled connection for its step
scripts and sends EVALSHA on it directly; a second thread or task that finds it busy uses the
client as usual, so parallel tool calls never wait on each other.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from ._connect import ledger_error
from ._store import _retry, _retry_async

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["StepConnection"]


class StepConnection:
    """One session's connection for step scripts (sync and asyncio)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._enabled = not ledger.cluster  # a cluster routes by slot: use the client
        self._conn: Any = None
        self._lock = threading.Lock()
        self._aconn: Any = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._alock: asyncio.Lock | None = None

    # ---- sync -------------------------------------------------------------------------------
    def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self._enabled or not self._lock.acquire(blocking=False):
            return self._ledger.script(name, keys, args)
        try:
            if self._conn is None:
                self._conn = self._ledger.redis.connection_pool.get_connection()
            sha, source = self._ledger._scripts[name].sha, self._ledger._scripts[name].script
            conn = self._conn

            def send() -> Any:
                try:
                    conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return conn.read_response()
                except NoScriptError:  # a restarted Redis forgot its scripts
                    conn.send_command("SCRIPT", "LOAD", source)
                    conn.read_response()
                    conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return conn.read_response()

            reply = self._retry().call_with_retry(send, lambda _e: conn.disconnect())
            if self._ledger.wait_replicas:  # on this connection: WAIT counts its writes
                conn.send_command(*self._ledger.wait_command())
                self._ledger.check_replicated(conn.read_response(), f"the {name} script")
            return reply
        except redis.RedisError as e:
            raise ledger_error(e, self._ledger.url, f"the {name} script") from e
        finally:
            self._lock.release()

    def _retry(self) -> Any:
        return _retry(self._ledger.settings)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._ledger.redis.connection_pool.release(self._conn)
                self._conn = None

    # ---- asyncio ----------------------------------------------------------------------------
    async def acall(self, name: str, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self._aloop is None:
            self._aloop, self._alock = loop, asyncio.Lock()
        lock = self._alock
        # Another loop, or the connection busy with a concurrent task: use the client.
        if not self._enabled or loop is not self._aloop or lock is None or lock.locked():
            return await self._ledger.ascript(name, keys, args)
        async with lock:
            client, scripts = self._ledger._async()
            try:
                if self._aconn is None:
                    self._aconn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
                conn = self._aconn
                sha, source = scripts[name].sha, scripts[name].script

                async def send() -> Any:
                    try:
                        await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                        return await conn.read_response()
                    except NoScriptError:
                        await conn.send_command("SCRIPT", "LOAD", source)
                        await conn.read_response()
                        await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                        return await conn.read_response()

                async def fail(_e: Exception) -> None:
                    await conn.disconnect()

                reply = await _retry_async(self._ledger.settings).call_with_retry(send, fail)
                if self._ledger.wait_replicas:
                    await conn.send_command(*self._ledger.wait_command())
                    self._ledger.check_replicated(await conn.read_response(),
                                                  f"the {name} script")
                return reply
            except redis.RedisError as e:
                raise ledger_error(e, self._ledger.url, f"the {name} script") from e

    async def aclose(self) -> None:
        if self._aconn is not None and self._aloop is asyncio.get_running_loop():
            client: aredis.Redis = self._ledger._async()[0]
            await client.connection_pool.release(self._aconn)
        self._aconn = None
        self.close()
