"""Fixtures shared by every test: a real Redis, a ledger under a key prefix of the test's own,
and no network beyond loopback."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import Iterator

import pytest
import redis

from _support import SHARED_URL, RedisServer, answers, tmpdir


def _is_loopback(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = str(address[0])
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return True  # unix sockets


_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may not reach the network: {address!r}")
    _real_connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]

# CrewAI keeps kickoff outputs and memory under CREWAI_STORAGE_DIR (by default a folder named
# after the working directory in the home directory, shared by every run there): each test
# session (each xdist worker) and the children it starts get a folder of their own.
CREWAI_STORAGE = tmpdir("al-crewai-storage-")
os.environ["CREWAI_STORAGE_DIR"] = str(CREWAI_STORAGE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(CREWAI_STORAGE, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis at 127.0.0.1:6379 when one answers, else a server of the suite's own."""
    if answers(SHARED_URL):
        yield SHARED_URL
        return
    d = tmpdir()
    server = RedisServer(d, appendonly=False).start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (never FLUSHDB)."""
    p = f"altest-{uuid.uuid4().hex[:10]}"
    yield p
    delete_prefix(redis_url, p)


@pytest.fixture
def ledger(redis_url: str, prefix: str):  # type: ignore[no-untyped-def]
    from agentledger import Ledger

    led = Ledger.from_url(redis_url, prefix=prefix, lease_ms=3000)
    yield led
    led.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own with an append-only file fsynced on every write."""
    d = tmpdir()
    server = RedisServer(d).start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(d, ignore_errors=True)
