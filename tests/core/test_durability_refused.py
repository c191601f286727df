"""Durability "async": records sent with replies off that Redis refuses are raised at the next
barrier, as their replies would have been, and nothing sent after a refused record is applied.

Refusals: the run taken over (fenced out), out of memory (maxmemory, noeviction), a script
error. Each runs with the synchronous and the asyncio API on a redis-server of the module's own
(its command counters tell when it has processed a record: no sleeps).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from _support import RedisServer, tmpdir
from agentledger import FencedOutError, Ledger, LedgerError, RunSession, RunStatus, StepCall


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    d = tmpdir()
    srv = RedisServer(d, appendonly=False).start()
    try:
        yield srv
    finally:
        srv.kill()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.config_set("maxmemory", 0)
    client.flushall()  # the module's own server
    client.close()


def _evals(admin: redis.Redis) -> int:
    """How many scripts (EVAL, EVALSHA) the server has processed (run or refused)."""
    stats = admin.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get(k, 0))
               for c in ("eval", "evalsha") for k in ("calls", "rejected_calls"))


def _wait_evals(admin: redis.Redis, n: int) -> None:
    while _evals(admin) < n:
        time.sleep(0.001)


async def _open(ledger: Ledger, run_id: str, mode: str) -> RunSession:
    return ledger.open_run(run_id) if mode == "sync" else await ledger.aopen_run(run_id)


async def _llm(session: RunSession, mode: str, name: str, value: Any = "v") -> Any:
    call = StepCall(kind="llm", name=name, inputs=name, intent=False)
    if mode == "sync":
        return session.call(call, lambda: value)

    async def body() -> Any:
        return value

    return await session.acall(call, body)


async def _barrier(session: RunSession, mode: str) -> None:
    if mode == "sync":
        session.barrier()
    else:
        await session.abarrier()


async def _finish_failed(session: RunSession, mode: str, error: BaseException) -> bool:
    if mode == "sync":
        return session.finish(RunStatus.FAILED, error)
    return await session.afinish(RunStatus.FAILED, error)


def _recorded(ledger: Ledger, run_id: str) -> list[str]:
    return [s.name for s in sorted(ledger.steps(run_id), key=lambda s: s.seq)]


MODES = pytest.mark.parametrize("mode", ["sync", "asyncio"])


@MODES
def test_fenced_out_is_raised_at_the_barrier(server: RedisServer, admin: redis.Redis,
                                            mode: str) -> None:
    ledger = Ledger(url=server.url, prefix="f", durability="async")
    other = Ledger(url=server.url, prefix="f")

    async def scenario() -> None:
        session = await _open(ledger, "r", mode)
        base = _evals(admin)
        await _llm(session, mode, "s1")
        _wait_evals(admin, base + 1)  # applied before the takeover
        other.open_run("r", on_busy="takeover").stop_renewing()
        await _llm(session, mode, "s2")  # refused: fenced out; so nothing after it runs
        await _llm(session, mode, "s3")
        with pytest.raises(FencedOutError, match="was taken over"):
            await _barrier(session, mode)
        assert session.fenced
        assert _recorded(ledger, "r") == ["s1"]
        with pytest.raises(FencedOutError):
            await _llm(session, mode, "s4")
        session.stop_renewing()

    try:
        asyncio.run(scenario())
    finally:
        ledger.close()
        other.close()


@MODES
def test_out_of_memory_is_raised_at_the_barrier_and_stops_the_batch(
        server: RedisServer, admin: redis.Redis, mode: str) -> None:
    ledger = Ledger(url=server.url, prefix="m", durability="async")

    def out_of_memory(on: bool) -> None:
        # maxmemory below what the server already uses: every write is refused (noeviction).
        admin.config_set("maxmemory", 100_000 if on else 0)

    async def scenario() -> None:
        session = await _open(ledger, "r", mode)
        base = _evals(admin)
        await _llm(session, mode, "s1")  # applied
        _wait_evals(admin, base + 1)
        out_of_memory(True)
        await _llm(session, mode, "s2")  # refused: out of memory
        _wait_evals(admin, base + 2)
        out_of_memory(False)  # room again...
        await _llm(session, mode, "s3")  # ...but a record after a refused one is not applied
        _wait_evals(admin, base + 3)
        out_of_memory(True)  # again when the barrier asks why
        with pytest.raises(LedgerError, match="maxmemory") as caught:
            await _barrier(session, mode)
        assert "complete script" in str(caught.value)
        assert "2 of 3 step records" in str(caught.value)
        out_of_memory(False)
        assert _recorded(ledger, "r") == ["s1"]
        # The run is not marked ended: it resumes from its records.
        assert not await _finish_failed(session, mode, caught.value)
        run = ledger.get_run("r")
        assert run is not None and run.status == "running"

    try:
        asyncio.run(scenario())
    finally:
        ledger.close()


@MODES
def test_a_script_error_is_raised_at_the_barrier_and_stops_the_batch(
        server: RedisServer, admin: redis.Redis, mode: str) -> None:
    ledger = Ledger(url=server.url, prefix="e", durability="async")
    steps = ledger.keys("r").steps

    async def scenario() -> None:
        session = await _open(ledger, "r", mode)
        base = _evals(admin)
        await _llm(session, mode, "s1")
        _wait_evals(admin, base + 1)
        admin.rename(steps, "aside")
        admin.set(steps, "not a hash")  # the next record's script fails (WRONGTYPE)
        await _llm(session, mode, "s2")
        _wait_evals(admin, base + 2)
        admin.delete(steps)
        admin.rename("aside", steps)
        await _llm(session, mode, "s3")  # would apply: it does not, the one before it failed
        with pytest.raises(LedgerError, match="refused the complete script: WRONGTYPE"):
            await _barrier(session, mode)
        assert _recorded(ledger, "r") == ["s1"]
        session.stop_renewing()

    try:
        asyncio.run(scenario())
    finally:
        ledger.close()
