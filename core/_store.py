"""``RedisStore``: the ledger's Redis clients and Lua scripts (sync, and asyncio per loop)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

from . import _scripts as lua
from ._connect import (
    AsyncDeadlineRetry,
    ConnectSettings,
    DeadlineRetry,
    async_twin,
    client_from_url,
    ledger_error,
)
from ._errors import LedgerUnavailableError
from ._keys import RunKeys, check_run_id, runs_index
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

__all__ = ["NOT_MADE", "Read", "RedisStore"]

# A read made in the round trip of a run's open: a registered script, its keys, its arguments.
Read = tuple[str, list[str], list[Any]]
NOT_MADE: Any = object()  # script_and_index's read reply where the read was not made

log = logging.getLogger("agentledger")

_SCRIPTS = {
    "acquire": lua.ACQUIRE_RUN,
    "renew": lua.RENEW_LEASE,
    "finish": lua.FINISH_RUN,
    "claim": lua.CLAIM_STEP,
    "complete": lua.COMPLETE_STEP,
    "decide": lua.DECIDE_STEP,
    "delete": lua.DELETE_RUN,
    "put_blob": lua.PUT_BLOB,
    "suspend": lua.SUSPEND_STEP,
}


def _retry(settings: ConnectSettings) -> DeadlineRetry:
    # Ride out a short Redis restart, within half the lease, before failing closed. Every
    # script is idempotent under one fencing token, so a retried call after a lost reply is safe.
    return DeadlineRetry(settings.retries, settings.budget_s)


def _retry_async(settings: ConnectSettings) -> AsyncDeadlineRetry:
    return AsyncDeadlineRetry(settings.retries, settings.budget_s)


def _warn_without_timeout(client: redis.Redis | RedisCluster, settings: ConnectSettings) -> None:
    kwargs = (client.nodes_manager.connection_kwargs if isinstance(client, RedisCluster)
              else client.connection_pool.connection_kwargs)
    if kwargs.get("socket_timeout") is None:
        log.warning("agentledger: the given Redis client has no socket_timeout, so a hung Redis "
                    "blocks steps and lease renewals for as long as it lasts; give it one "
                    "(for this lease, %.1f s) or pass url= instead", settings.socket_timeout_s)


def _s(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


class RedisStore:
    """Clients and scripts under one key prefix. A client passed in stays its owner's to close."""

    def __init__(self, client: redis.Redis | RedisCluster | None, url: str | None, prefix: str,
                 settings: ConnectSettings, allow_evicting: bool = False) -> None:
        if client is None and url is None:
            raise TypeError("Ledger needs a redis client or a url (or use Ledger.from_url())")
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must be a non-empty string without braces")
        self.url = url
        self.prefix = prefix
        self.settings = settings
        self.redis_retries = settings.retries
        self.allow_evicting_redis = allow_evicting
        self._server_checked = False
        self._owns_client = client is None
        if client is None:
            assert url is not None
            client = client_from_url(url, settings)
        else:
            _warn_without_timeout(client, settings)
        # A Redis Cluster client: every per-run script touches one slot (the run's hash tag);
        # the cluster refuses scripts inside pipelines, so those become sequential calls.
        self.cluster = isinstance(client, RedisCluster)
        self.redis: redis.Redis = cast(redis.Redis, client)
        self._script_sources = dict(_SCRIPTS)
        self._scripts: dict[str, Script] = {n: self.redis.register_script(s)
                                            for n, s in _SCRIPTS.items()}
        self.wait_replicas = 0  # durability "replicated": see require_replicas()
        self.wait_timeout_ms = 1000
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[aredis.Redis, dict[str, AsyncScript]]
        ] = weakref.WeakKeyDictionary()

    # ---- clients --------------------------------------------------------------------------
    def _async(self) -> tuple[aredis.Redis, dict[str, AsyncScript]]:
        # redis.asyncio connections belong to one event loop: keep one client per loop.
        loop = asyncio.get_running_loop()
        entry = self._aclients.get(loop)
        if entry is None:
            with self.redis_errors():
                client = cast(aredis.Redis, async_twin(
                    cast(redis.Redis | RedisCluster, self.redis), self.settings))
            entry = (client, {n: client.register_script(s)
                              for n, s in self._script_sources.items()})
            self._aclients[loop] = entry
        return entry

    def register_scripts(self, sources: dict[str, str]) -> None:
        """Add an adapter's own scripts (name -> Lua source), so that a run session can send
        them on its step connection, in order with its step records. Names must not clash."""
        for name, source in sources.items():
            known = self._script_sources.get(name)
            if known == source:
                continue
            if known is not None:
                raise ValueError(f"a different script is registered as {name!r}")
            self._script_sources[name] = source
            self._scripts[name] = self.redis.register_script(source)
            for client, scripts in self._aclients.values():
                scripts[name] = client.register_script(source)

    def check_server(self) -> None:
        """First contact (once per ledger): connect without retries, so that a wrong password
        or a URL that does not fit the server fails at once by name, and refuse an evicting
        Redis (see :mod:`agentledger._servercheck`)."""
        if not self._server_checked:
            from ._servercheck import check_server

            check_server(cast(redis.Redis | RedisCluster, self.redis), self.url,
                         self.allow_evicting_redis)
            self._server_checked = True

    async def acheck_server(self) -> None:
        if not self._server_checked:
            await asyncio.to_thread(self.check_server)

    def async_client(self) -> aredis.Redis:
        """The redis.asyncio client of the running event loop (one per loop, made on first use
        from the sync client's connection settings)."""
        return self._async()[0]

    def keys(self, run_id: str) -> RunKeys:
        return RunKeys(self.prefix, check_run_id(run_id))

    # ---- durability "replicated" ------------------------------------------------------------
    def require_replicas(self, replicas: int, timeout_ms: int = 1000) -> None:
        """Wait after each record until ``replicas`` replicas have it (``WAIT``), so that a
        failover loses nothing acknowledged. 0 turns it off. On a Redis Cluster the record and
        its WAIT go over one connection to the master owning the run's slot."""
        if replicas < 0 or timeout_ms < 1:
            raise ValueError("replicas must be >= 0 and replica_timeout_ms >= 1")
        self.wait_replicas, self.wait_timeout_ms = int(replicas), int(timeout_ms)

    def wait_command(self) -> tuple[str, int, int]:
        return ("WAIT", self.wait_replicas, self.wait_timeout_ms)

    def check_replicated(self, acked: Any, what: str) -> None:
        """Fail closed when fewer replicas than required acknowledged a record."""
        if int(acked) < self.wait_replicas:
            raise LedgerUnavailableError(
                f"{what}: {int(acked)} of {self.wait_replicas} replicas acknowledged the record "
                f"within {self.wait_timeout_ms} ms; a failover could lose it")

    def cluster_retry(self) -> DeadlineRetry:
        """The retry of a command sent to a slot's owner: a lost connection or a reply saying
        the slot is elsewhere (a failover) is tried again on the owner a fresh slot map names."""
        retry = _retry(self.settings)
        retry.update_supported_errors(SLOT_MOVED)
        return retry

    def acluster_retry(self) -> AsyncDeadlineRetry:
        retry = _retry_async(self.settings)
        retry.update_supported_errors(SLOT_MOVED)
        return retry

    def _on_owner(self, key: str, commands: list[tuple[Any, ...]], source: Any) -> list[Any]:
        # Commands then WAIT on one connection to the master owning key's slot, one round
        # trip. Retried after a failover: every caller's commands are safe to apply twice
        # (the ledger's scripts are idempotent under one fencing token; a queue entry sent
        # twice is read twice and the run lease makes the second a no-op).
        cluster = as_cluster(self.redis)

        def attempt() -> list[Any]:
            conn, pool = owner_connection(cluster, key)
            try:
                replies = exchange(conn, commands)
                if source is not None and isinstance(replies[0], NoScriptError):
                    exchange(conn, [("SCRIPT", "LOAD", source)])
                    replies = exchange(conn, commands)
                for r in replies:
                    if isinstance(r, SLOT_MOVED):
                        raise r
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
            return replies

        return self.cluster_retry().call_with_retry(attempt, lambda _e: refresh_slots(cluster))

    async def _aon_owner(self, key: str, commands: list[tuple[Any, ...]],
                         source: Any) -> list[Any]:
        cluster = cast(aredis.RedisCluster, self._async()[0])

        async def attempt() -> list[Any]:
            conn, node = await aowner_connection(cluster, key)
            try:
                replies = await aexchange(conn, commands)
                if source is not None and isinstance(replies[0], NoScriptError):
                    await aexchange(conn, [("SCRIPT", "LOAD", source)])
                    replies = await aexchange(conn, commands)
                for r in replies:
                    if isinstance(r, SLOT_MOVED):
                        raise r
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                arelease(node, conn)
            return replies

        async def fail(_e: Exception) -> None:
            await arefresh_slots(cluster)

        return await self.acluster_retry().call_with_retry(attempt, fail)

    def commands_replicated(self, key: str, commands: list[tuple[Any, ...]], what: str,
                            source: Any = None) -> list[Any]:
        """Send ``commands`` (all on ``key``'s slot) and WAIT on one connection; their replies.
        An error reply is raised; fewer replicas than required is an error (fail closed)."""
        wait = [*commands, self.wait_command()]
        try:
            if self.cluster:
                replies = self._on_owner(key, wait, source)
            else:
                def attempt() -> list[Any]:
                    pipe = self.redis.pipeline(transaction=False)
                    for cmd in wait:
                        pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
                    return list(pipe.execute(raise_on_error=False))

                replies = attempt()
                if source is not None and isinstance(replies[0], NoScriptError):
                    self.redis.script_load(source)
                    replies = attempt()
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            raise ledger_error(e, self.url, what) from e
        for r in replies:
            if isinstance(r, Exception):
                raise ledger_error(r, self.url, what) from r
        self.check_replicated(replies[-1], what)
        return replies[:-1]

    async def acommands_replicated(self, key: str, commands: list[tuple[Any, ...]], what: str,
                                   source: Any = None) -> list[Any]:
        wait = [*commands, self.wait_command()]
        try:
            if self.cluster:
                replies = await self._aon_owner(key, wait, source)
            else:
                client = self._async()[0]

                async def attempt() -> list[Any]:
                    pipe = client.pipeline(transaction=False)
                    for cmd in wait:
                        pipe.execute_command(*cmd)
                    return list(await pipe.execute(raise_on_error=False))

                replies = await attempt()
                if source is not None and isinstance(replies[0], NoScriptError):
                    await client.script_load(source)
                    replies = await attempt()
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            raise ledger_error(e, self.url, what) from e
        for r in replies:
            if isinstance(r, Exception):
                raise ledger_error(r, self.url, what) from r
        self.check_replicated(replies[-1], what)
        return replies[:-1]

    def eval_replicated(self, script: Script, keys: list[str], args: list[Any], what: str) -> Any:
        """EVALSHA and WAIT on one connection (WAIT counts that connection's writes)."""
        return self.commands_replicated(
            keys[0], [("EVALSHA", script.sha, len(keys), *keys, *args)], what, script.script)[0]

    async def aeval_replicated(self, sha: str, source: Any, keys: list[str], args: list[Any],
                               what: str) -> Any:
        return (await self.acommands_replicated(
            keys[0], [("EVALSHA", sha, len(keys), *keys, *args)], what, source))[0]

    def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if self.wait_replicas:
            return self.eval_replicated(self._scripts[name], keys, args, f"the {name} script")
        try:
            return self._scripts[name](keys=keys, args=args)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            raise ledger_error(e, self.url, f"the {name} script") from e

    async def ascript(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if self.wait_replicas:
            script = self._scripts[name]
            return await self.aeval_replicated(script.sha, script.script, keys, args,
                                               f"the {name} script")
        try:
            return await self._async()[1][name](keys=keys, args=args)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            raise ledger_error(e, self.url, f"the {name} script") from e

    def script_and_index(self, name: str, keys: list[str], args: list[Any], run_id: str,
                         before: list[tuple[str, ...]] = (),  # type: ignore[assignment]
                         read: Read | None = None) -> Any:
        """Run ``before`` (commands on the run's keys), a script, and bump the run in the
        runs index: one pipelined round trip, or sequential calls on a Redis Cluster. With
        ``read`` (a registered script, its keys and arguments): that script too, after them in
        the same round trip, and the reply is ``(script's reply, read's reply)``; the read's
        reply is :data:`NOT_MADE` where it was not made (a cluster), and an exception in its
        place where it failed (it is the caller's to make again)."""
        stamp = {run_id: int(time.time() * 1000)}
        with self.redis_errors():
            if self.cluster:
                for cmd in before:
                    self.redis.execute_command(*cmd)  # type: ignore[no-untyped-call]
                reply = self.script(name, keys, args)
                self.redis.zadd(runs_index(self.prefix), stamp)
                return reply if read is None else (reply, NOT_MADE)
            def attempt() -> Any:
                pipe = self.redis.pipeline(transaction=False)
                for cmd in before:
                    pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
                # EVALSHA itself: a Script object in a pipeline first asks SCRIPT EXISTS, one
                # more round trip.
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
                pipe.zadd(runs_index(self.prefix), stamp)
                if read is not None:
                    pipe.evalsha(self._scripts[read[0]].sha, len(read[1]), *read[1], *read[2])
                if self.wait_replicas:
                    pipe.execute_command(*self.wait_command())  # type: ignore[no-untyped-call]
                return self._after_pipeline(pipe.execute(raise_on_error=False), len(before),
                                            name, read)

            try:
                try:
                    return attempt()
                except NoScriptError:  # a restarted Redis forgot it
                    self.redis.script_load(self._scripts[name].script)
                    return attempt()
            except redis.ResponseError as e:
                raise ledger_error(e, self.url, f"the {name} script") from e

    def _after_pipeline(self, replies: list[Any], n_before: int, name: str, read: Read | None
                        ) -> Any:
        """script_and_index's replies: errors of ``before``, the script and the index raised
        (NoScriptError as itself, for a retry), the read's returned in its place."""
        for r in replies[:n_before + 2]:
            if isinstance(r, Exception):
                raise r
        if self.wait_replicas:
            if isinstance(replies[-1], Exception):
                raise replies[-1]
            self.check_replicated(replies[-1], f"the {name} script")
        reply = replies[n_before]
        return reply if read is None else (reply, replies[n_before + 2])

    async def ascript_and_index(self, name: str, keys: list[str], args: list[Any], run_id: str,
                                before: list[tuple[str, ...]] = (),  # type: ignore[assignment]
                                read: Read | None = None) -> Any:
        stamp = {run_id: int(time.time() * 1000)}
        client, scripts = self._async()
        with self.redis_errors():
            if self.cluster:
                for cmd in before:
                    await client.execute_command(*cmd)  # type: ignore[no-untyped-call]
                reply = await self.ascript(name, keys, args)
                await client.zadd(runs_index(self.prefix), stamp)
                return reply if read is None else (reply, NOT_MADE)
            async def attempt() -> Any:
                pipe = client.pipeline(transaction=False)
                for cmd in before:
                    pipe.execute_command(*cmd)
                pipe.evalsha(scripts[name].sha, len(keys), *keys, *args)
                pipe.zadd(runs_index(self.prefix), stamp)
                if read is not None:
                    pipe.evalsha(scripts[read[0]].sha, len(read[1]), *read[1], *read[2])
                if self.wait_replicas:
                    pipe.execute_command(*self.wait_command())
                return self._after_pipeline(await pipe.execute(raise_on_error=False),
                                            len(before), name, read)

            try:
                try:
                    return await attempt()
                except NoScriptError:
                    await client.script_load(scripts[name].script)
                    return await attempt()
            except redis.ResponseError as e:
                raise ledger_error(e, self.url, f"the {name} script") from e

    @contextmanager
    def redis_errors(self) -> Iterator[None]:
        """Map redis-py's connection errors to :class:`LedgerUnavailableError` (fail closed),
        for adapters that read or write keys of their own."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException,
                redis.exceptions.NoPermissionError) as e:
            raise ledger_error(e, self.url) from e

    def close(self) -> None:
        if self._owns_client:
            self.redis.close()

    async def aclose(self) -> None:
        entry = self._aclients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].aclose()
