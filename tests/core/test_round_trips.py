"""The hot path's promise, counted by the server: one script call per step boundary, none for a
replay, and a Redis that forgot its scripts (restart, SCRIPT FLUSH) is served again."""

from __future__ import annotations

import asyncio

import redis

from _support import RedisServer
from agentledger import Ledger, StepCall


def command_counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def steps(session: object, n_tools: int, n_llm: int, first: int = 0) -> None:
    for i in range(first, first + n_tools):
        session.call(StepCall(kind="tool", name="t", inputs={"i": i}), lambda: "x")  # type: ignore[attr-defined]
    for i in range(first, first + n_llm):
        session.call(StepCall(kind="llm", name="m", inputs={"i": i}, intent=False), lambda: "y")  # type: ignore[attr-defined]


def test_round_trips_per_step_counted_by_the_server(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    ledger = Ledger.from_url(own_redis.url, prefix="rt", lease_ms=60_000)
    with ledger.run("warm") as w:
        steps(w, 1, 1)  # every script loaded once on this server
    client.config_resetstat()
    with ledger.run("r") as s:
        steps(s, 5, 3)
    live = command_counts(client)
    # acquire + 2 per tool step + 1 per LLM step + finish; the index bumped twice.
    assert live.get("evalsha") == 1 + 2 * 5 + 3 + 1
    assert live.get("zadd") == 2
    # No SCRIPT EXISTS before a pipeline, no reloads. (commandstats also counts the commands
    # the scripts run inside the server, so HSET and friends appear too.)
    assert "script|exists" not in live and "script|load" not in live

    client.config_resetstat()
    with ledger.run("r") as s:
        steps(s, 5, 3)
        assert s.replayed == 8
    replay = command_counts(client)
    assert replay.get("evalsha") == 2  # the lease (records loaded with it) and the finish
    assert replay.get("hincrby") == 8  # the replay counters, inside the finish script
    ledger.close()


def test_a_redis_that_forgot_its_scripts_is_served_again(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    ledger = Ledger.from_url(own_redis.url, prefix="ns")
    s = ledger.open_run("r")
    steps(s, 2, 1)
    client.script_flush()
    steps(s, 2, 1, first=2)  # the session's own connection meets NOSCRIPT
    client.script_flush()
    s.finish("completed")  # a pipeline meets NOSCRIPT
    client.script_flush()
    with ledger.run("r") as again:  # the lease pipeline meets NOSCRIPT
        steps(again, 2, 1)
        steps(again, 2, 1, first=2)
        assert again.replayed == 6

    async def go() -> None:
        client.script_flush()
        async with ledger.arun("a") as sa:
            await sa.acall(StepCall(kind="tool", name="t", inputs={}), asyncio.sleep, 0, "v")
            client.script_flush()
            await sa.acall(StepCall(kind="tool", name="t", inputs={}), asyncio.sleep, 0, "w")
        await ledger.aclose()

    asyncio.run(go())
    assert [r.status for r in ledger.steps("a")] == ["completed", "completed"]
    ledger.close()


def test_leases_are_renewed_after_redis_forgot_the_script(own_redis: RedisServer) -> None:
    import time

    import pytest

    from agentledger import RunBusyError

    client = redis.Redis.from_url(own_redis.url)
    ledger = Ledger.from_url(own_redis.url, prefix="lr", lease_ms=300)
    held = ledger.open_run("r")
    for _ in range(4):  # every renewal tick meets NOSCRIPT
        client.script_flush()
        time.sleep(0.1)
    time.sleep(0.5)
    with pytest.raises(RunBusyError):
        ledger.open_run("r", on_busy="fail")  # still held: renewed all along
    assert not held.fenced
    held.finish("completed")
    ledger.close()
