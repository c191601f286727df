"""Connecting to Redis: URLs, timeouts tied to the lease, asyncio twins of a client, and what
redis-py's connection errors mean to a user.

Every client the ledger builds has connect and read timeouts, TCP keepalive and a retry bounded
by time, so that a hung Redis (stopped, or a half-open connection) fails a call closed well
before the run's lease would let another process take over. Authentication errors are never
retried. Passwords never leave this module in an error message: URLs are shown redacted.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ._errors import LedgerError, LedgerUnavailableError, RedisAuthError, RedisConfigError

__all__ = ["SCHEMES", "ConnectSettings", "async_twin", "client_from_url", "ledger_error",
           "redact", "redact_url"]

T = TypeVar("T")

SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://",
           "redis+sentinel://", "rediss+sentinel://")
_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^/\s:@]*:)[^@\s]*@")
_SENTINEL_OPTIONS = {"sentinel_password", "sentinel_username", "ssl_ca_certs", "ssl_certfile",
                     "ssl_keyfile", "ssl_cert_reqs"}


# ---- redaction ------------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """``url`` with its password (and any ``*password*`` query value) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _pw = userinfo.partition(":")
        if sep:
            netloc = f"{user}:***@{hosts}"
    query = "&".join(f"{k}=***" if "password" in k.lower() else f"{k}={quote(v, safe='')}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets_of(url: str | None) -> list[str]:
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        pw = userinfo.partition(":")[2]
        if pw:
            found += [pw, unquote(pw)]
    found += [v for k, v in parse_qsl(parts.query) if "password" in k.lower() and v]
    return found


def redact(text: str, url: str | None = None, secrets: list[str] | None = None) -> str:
    """``text`` with every password of ``url`` (and ``secrets``) replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    for s in sorted({*_secrets_of(url), *(secrets or [])}, key=len, reverse=True):
        if len(s) >= 4:  # shorter ones would blank ordinary words; URLs are caught above
            text = text.replace(s, "***")
    return text


# ---- timeouts and retries -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConnectSettings:
    """How long one Redis call may take. The defaults derive from the lease: a call with all
    its retries ends within half the lease, so a hung Redis fails the step closed before the
    lease lets another process take the run over."""

    connect_timeout_s: float
    socket_timeout_s: float
    budget_s: float  # retries stop once this much time has passed since the call began
    retries: int

    @classmethod
    def for_lease(cls, lease_ms: int, retries: int, connect_timeout_s: float | None = None,
                  socket_timeout_s: float | None = None) -> ConnectSettings:
        lease_s = lease_ms / 1000
        # At least 1 s: a worker blocks on its queue for half a second per read.
        read = socket_timeout_s if socket_timeout_s is not None else max(1.0, lease_s / 10)
        conn = connect_timeout_s if connect_timeout_s is not None else max(0.5, lease_s / 10)
        return cls(conn, read, max(read, lease_s / 2 - read - conn), retries)

    def client_kwargs(self, tcp: bool = True) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"socket_timeout": self.socket_timeout_s,
                                  "socket_connect_timeout": self.connect_timeout_s,
                                  "retry": DeadlineRetry(self.retries, self.budget_s)}
        if tcp:
            kwargs["socket_keepalive"] = True
            kwargs["socket_keepalive_options"] = _keepalive(self.socket_timeout_s)
        return kwargs


def _keepalive(read_s: float) -> dict[int, int]:
    # A half-open idle connection is found dead within a few seconds of probing, not the
    # kernel's default two hours.
    opts: dict[int, int] = {}
    idle = max(1, int(read_s))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            opts[getattr(socket, name)] = value
    return opts


def _never_retried(e: BaseException) -> bool:
    return isinstance(e, AuthenticationError | AuthorizationError)


class DeadlineRetry(Retry):
    """redis-py's retry with backoff, bounded by time as well as by count; a wrong password
    is never retried."""

    def __init__(self, retries: int, budget_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=min(1.0, budget_s / 4), base=0.05), retries)
        self.budget_s = budget_s

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> T:
        # The loop is ours, not super()'s: redis-py before 7 takes neither is_retryable nor
        # with_failure_count, and the floor (5.3) must work as well as the newest.
        deadline = time.monotonic() + self.budget_s
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if _never_retried(error) or (is_retryable is not None
                                             and not is_retryable(error)):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if (0 <= self._retries < failures) or time.monotonic() >= deadline:
                    raise error
                pause = self._backoff.compute(failures)
                if pause > 0:
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))


class AsyncDeadlineRetry(AsyncRetry):
    """:class:`DeadlineRetry` for redis.asyncio."""

    def __init__(self, retries: int, budget_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=min(1.0, budget_s / 4), base=0.05), retries)
        self.budget_s = budget_s

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[..., Any],
                              is_retryable: Callable[[Exception], bool] | None = None,
                              with_failure_count: bool = False) -> T:
        deadline = time.monotonic() + self.budget_s
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                if _never_retried(error) or (is_retryable is not None
                                             and not is_retryable(error)):
                    raise
                failures += 1
                if with_failure_count:
                    await fail(error, failures)
                else:
                    await fail(error)
                if (0 <= self._retries < failures) or time.monotonic() >= deadline:
                    raise error
                pause = self._backoff.compute(failures)
                if pause > 0:
                    await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))


def async_retry_like(retry: Any, settings: ConnectSettings) -> AsyncDeadlineRetry:
    budget = retry.budget_s if isinstance(retry, DeadlineRetry) else settings.budget_s
    # get_retries() exists from redis-py 6; _retries is what it returns.
    retries = int(getattr(retry, "_retries", settings.retries)) if isinstance(retry, Retry) \
        else settings.retries
    return AsyncDeadlineRetry(retries, budget)


# ---- building clients -----------------------------------------------------------------------
def client_from_url(url: str, settings: ConnectSettings) -> redis.Redis | RedisCluster:
    """A sync client for any of :data:`SCHEMES`, with the settings' timeouts and retry."""
    if not url.startswith(SCHEMES):
        raise ValueError(f"unsupported Redis URL {redact_url(url)!r}: use "
                         + ", ".join(s.removesuffix("//") for s in SCHEMES))
    try:
        if "+cluster://" in url:
            scheme = "rediss://" if url.startswith("rediss+") else "redis://"
            return RedisCluster.from_url(scheme + url.split("://", 1)[1],
                                         **settings.client_kwargs())
        if "+sentinel://" in url:
            return _sentinel_client(url, settings)
        return redis.Redis.from_url(url, **settings.client_kwargs(tcp=not url.startswith("unix:")))
    except ValueError as e:
        raise ValueError(f"bad Redis URL {redact_url(url)!r}: {redact(str(e), url)}") from None
    except Exception as e:
        raise ledger_error(e, url) from None


def _sentinel_client(url: str, settings: ConnectSettings) -> redis.Redis:
    spec = _sentinel_spec(url)
    kwargs = settings.client_kwargs()
    manager = Sentinel(spec.sentinels,  # type: ignore[no-untyped-call]
                       sentinel_kwargs={**kwargs, **spec.sentinel_kwargs},
                       **kwargs, **spec.master_kwargs)
    return cast(redis.Redis, manager.master_for(  # type: ignore[no-untyped-call]
        spec.service, redis_class=redis.Redis))


@dataclass(slots=True)
class _SentinelSpec:
    sentinels: list[tuple[str, int]]
    service: str
    master_kwargs: dict[str, Any]
    sentinel_kwargs: dict[str, Any]


def _sentinel_spec(url: str) -> _SentinelSpec:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` with the
    optional query ``sentinel_password``, ``sentinel_username`` and ``ssl_*`` files."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.rpartition(":") if ":" in h else (h, "", "26379")
        sentinels.append((host.strip("[]"), int(port or "26379")))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("a sentinel URL names its service: redis+sentinel://host:26379/mymaster[/db]")
    master: dict[str, Any] = {"db": int(path[1]) if len(path) == 2 else 0}
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        master["username"] = unquote(user) or None
        if sep:
            master["password"] = unquote(pw)
    side: dict[str, Any] = {}
    for k, v in parse_qsl(parts.query):
        if k not in _SENTINEL_OPTIONS:
            raise ValueError(f"unknown sentinel URL option {k!r} (known: "
                             f"{', '.join(sorted(_SENTINEL_OPTIONS))})")
        if k.startswith("sentinel_"):
            side[k.removeprefix("sentinel_")] = v
        else:
            master[k] = v
    if url.startswith("rediss+"):
        master["ssl"] = True
        side["ssl"] = True
        side.update({k: v for k, v in master.items() if k.startswith("ssl_")})
    return _SentinelSpec(sentinels, path[0], master, side)


# ---- asyncio twins --------------------------------------------------------------------------
def _accepted(cls: type, *more: type) -> set[str]:
    names: set[str] = set()
    for c in (cls, *more):
        for klass in c.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                names |= set(inspect.signature(init).parameters) - {"self", "kwargs", "args"}
    return names


def _portable(kwargs: dict[str, Any], accepted: set[str], what: str) -> dict[str, Any]:
    """The settings the async client can take; refuse one it would silently drop."""
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in ("retry", "retry_on_error", "connection_class", "connection_pool",
                 "event_dispatcher", "parser_class", "encoder_class", "redis_connect_func"):
            continue
        if k in accepted:
            out[k] = v
        elif v not in (None, False, "", 0):
            raise LedgerError(f"the asyncio API cannot copy the setting {k!r} of the given {what}; "
                              "pass url= instead, or a client without it")
    return out


def async_twin(client: redis.Redis | RedisCluster, settings: ConnectSettings
               ) -> aredis.Redis | AsyncRedisCluster:
    """A redis.asyncio client to the same server(s) with the same credentials, TLS and
    timeouts as ``client`` (a plain, TLS, unix-socket, Sentinel-managed or Cluster client)."""
    if isinstance(client, RedisCluster):
        return _async_cluster(client, settings)
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    retry = async_retry_like(kwargs.get("retry"), settings)
    if isinstance(pool, SentinelConnectionPool):
        return _async_sentinel(pool, kwargs, retry)
    conn_class = pool.connection_class
    if issubclass(conn_class, redis.UnixDomainSocketConnection):
        aclass: type = aredis.UnixDomainSocketConnection
    elif issubclass(conn_class, redis.SSLConnection):
        aclass = aredis.SSLConnection
    elif issubclass(conn_class, redis.Connection):
        aclass = aredis.Connection
    else:
        raise LedgerError(f"the asyncio API cannot copy a {conn_class.__name__} connection; "
                          "pass url= to the Ledger instead")
    port = _portable(kwargs, _accepted(aclass), "client")
    apool = aredis.ConnectionPool(connection_class=aclass, **port)
    return aredis.Redis(connection_pool=apool, retry=retry)


def _async_sentinel(pool: SentinelConnectionPool, kwargs: dict[str, Any],
                    retry: AsyncDeadlineRetry) -> aredis.Redis:
    manager = pool.sentinel_manager
    sentinels = []
    for s in manager.sentinels:
        ck = s.connection_pool.connection_kwargs
        sentinels.append((ck["host"], ck["port"]))
    accepted = _accepted(aredis.SSLConnection if kwargs.get("ssl") else aredis.Connection)
    accepted.add("ssl")
    side = _portable(dict(manager.sentinel_kwargs), accepted, "sentinel client")
    master = _portable({k: v for k, v in kwargs.items() if k not in ("host", "port")},
                       accepted, "sentinel-managed client")
    asentinel = AsyncSentinel(sentinels, sentinel_kwargs=side,  # type: ignore[no-untyped-call]
                              **master)
    return cast(aredis.Redis, asentinel.master_for(pool.service_name, redis_class=aredis.Redis,
                                                   retry=retry))


def _async_cluster(client: RedisCluster, settings: ConnectSettings) -> AsyncRedisCluster:
    manager = client.nodes_manager
    kwargs = dict(manager.connection_kwargs)
    ssl = issubclass(kwargs.get("connection_class", redis.Connection), redis.SSLConnection)
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    accepted = _accepted(AsyncRedisCluster)
    port = _portable(kwargs, accepted, "cluster client")
    nodes = [AsyncClusterNode(n.host, n.port) for n in manager.startup_nodes.values()]
    return AsyncRedisCluster(startup_nodes=nodes, ssl=ssl,
                             retry=async_retry_like(kwargs.get("retry"), settings), **port)


# ---- what an error means ----------------------------------------------------------------------
def ledger_error(e: BaseException, url: str | None, what: str = "") -> LedgerError:
    """The :class:`LedgerError` a redis-py error means, with a one-line message and no
    password in it."""
    where = f" at {redact_url(url)}" if url else ""
    text = redact(" ".join(str(e).split()), url)[:300] or type(e).__name__
    if isinstance(e, LedgerError):
        return e
    if isinstance(e, AuthenticationError):
        return RedisAuthError(f"Redis{where} refused the credentials (authentication failed: "
                              f"{text}); check the user name and password")
    if isinstance(e, AuthorizationError | redis.exceptions.NoPermissionError):
        return RedisAuthError(f"the Redis user{where} may not do this ({text}); see the ACL the "
                              "ledger needs in docs/architecture.md")
    if isinstance(e, redis.exceptions.RedisClusterException):
        if "not enabled" in text.lower():
            return RedisConfigError(f"{redact_url(url or '')} names a Redis Cluster but the "
                                    f"node is not in cluster mode ({text}); use redis://")
        return LedgerUnavailableError(f"Redis Cluster unreachable{where} ({text})")
    if isinstance(e, redis.ResponseError):
        low = text.lower()
        if "db index is out of range" in low or "invalid db index" in low:
            return RedisConfigError(f"Redis{where} has no such database ({text}); pick a "
                                    "database number the server has (see its `databases`)")
        if "wrongpass" in low or "noauth" in low or "invalid password" in low:
            return RedisAuthError(f"Redis{where} refused the credentials ({text})")
        return LedgerError(f"Redis{where} refused {what or 'a command'}: {text}")
    if isinstance(e, redis.ConnectionError | redis.TimeoutError | OSError):
        hint = ""
        if url and url.startswith("rediss") and isinstance(e, redis.TimeoutError | OSError):
            hint = "; a rediss:// URL needs a TLS port: is this a plain one?"
        return LedgerUnavailableError(f"Redis unreachable{where} ({text}){hint}")
    return LedgerError(f"Redis{where}: {type(e).__name__}: {text}")

