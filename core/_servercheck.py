"""What the ledger checks on its first contact with Redis.

One connection attempt without retries, so that what a user got wrong (a wrong password, a
``rediss://`` URL to a plain port, a database index out of range) is reported at once and by
name rather than as "unreachable" after the retries. Then the server's ``maxmemory-policy``:
a Redis that evicts keys it holds forever drops step records, and a dropped record re-runs a
side effect, so ``allkeys-*`` is refused (unless the user opts out) and ``volatile-*`` warned
about (the ledger's records carry a TTL only once their run ended).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from ._connect import ledger_error, redact_url
from ._errors import LedgerError, RedisConfigError

__all__ = ["check_server"]

log = logging.getLogger("agentledger")

_FIX = ("set `maxmemory-policy noeviction` (CONFIG SET maxmemory-policy noeviction, and in "
        "redis.conf), or give the ledger a Redis of its own; Ledger(allow_evicting_redis=True) "
        "accepts the risk")


def check_server(client: redis.Redis | RedisCluster, url: str | None,
                 allow_evicting: bool) -> None:
    """Connect once and check the eviction policy; raise a :class:`LedgerError` naming the
    problem, or log a warning for what is risky but allowed."""
    policies = _policies(client, url)
    where = redact_url(url) if url else "the given Redis client"
    for node, policy in policies.items():
        if policy is None:
            log.warning("agentledger: could not read maxmemory-policy of %s%s (CONFIG GET is "
                        "not allowed for this user); make sure it is noeviction: an evicting "
                        "Redis drops step records and re-runs their side effects", where, node)
        elif policy.startswith("allkeys-"):
            message = (f"Redis {where}{node} has maxmemory-policy {policy}: it evicts step "
                       "records of live runs under memory pressure, and a lost record re-runs "
                       f"its side effect; {_FIX}")
            if not allow_evicting:
                raise RedisConfigError(message)
            log.warning("agentledger: %s (allowed by allow_evicting_redis=True)", message)
        elif policy.startswith("volatile-"):
            log.warning("agentledger: Redis %s%s has maxmemory-policy %s: ended runs (which "
                        "carry a TTL) may be evicted before it; noeviction keeps them",
                        where, node, policy)


def _decode_policy(reply: Any) -> str | None:
    if isinstance(reply, dict):
        items = list(reply.items())
    elif isinstance(reply, list | tuple):
        items = list(zip(reply[::2], reply[1::2], strict=False))
    else:
        return None
    for k, v in items:
        key = k.decode() if isinstance(k, bytes) else str(k)
        if key == "maxmemory-policy":
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def _policies(client: redis.Redis | RedisCluster, url: str | None) -> dict[str, str | None]:
    """maxmemory-policy of each primary ('' names the only one); None where CONFIG is denied."""
    try:
        if isinstance(client, RedisCluster):
            out: dict[str, str | None] = {}
            for node in client.get_primaries():  # type: ignore[no-untyped-call]
                conn = client.get_redis_connection(node)
                out[f" (node {node.host}:{node.port})"] = _config_get(conn)
            return out
        pool = client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            return {"": _config_get(client)}
        return {"": _probe(pool, url)}
    except LedgerError:
        raise
    except Exception as e:
        raise ledger_error(e, url) from None


def _config_get(client: redis.Redis) -> str | None:
    try:
        return _decode_policy(client.config_get("maxmemory-policy"))
    except redis.ResponseError:  # NOPERM, or CONFIG renamed away
        return None


def _probe(pool: redis.ConnectionPool, url: str | None) -> str | None:
    """One connection, no retries: fails within the connect timeout."""
    conn = pool.connection_class(**{**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)})
    try:
        try:
            conn.connect()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if isinstance(conn, redis.SSLConnection) and not isinstance(
                    e, redis.AuthenticationError) and _speaks_plain_redis(conn):
                raise RedisConfigError(
                    f"{redact_url(url or '')} asks for TLS but {conn.host}:{conn.port} speaks "
                    "plain Redis; use redis:// or the server's TLS port") from None
            raise
        try:
            conn.send_command("CONFIG", "GET", "maxmemory-policy")
            return _decode_policy(conn.read_response())
        except redis.ResponseError:
            return None
    finally:
        conn.disconnect()


def _speaks_plain_redis(conn: redis.SSLConnection) -> bool:
    try:
        with socket.create_connection((conn.host, conn.port),
                                      timeout=conn.socket_connect_timeout or 2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16)[:1] in (b"+", b"-")
    except OSError:
        return False
