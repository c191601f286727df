"""Durability "async": records sent without waiting, acknowledged at barriers (issue 12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis

import agentledger
from _support import RedisServer
from agentledger import FencedOutError, Ledger, RunStatus, StepCall


def _llm(session: agentledger.RunSession, i: int, size: int = 10) -> str:
    # An LLM-like call: no intent record, only its outcome.
    return session.call(StepCall(kind="llm", name="chat", inputs=i, intent=False),
                        lambda: "x" * size)


def test_unacknowledged_records_are_bounded_by_count(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async", max_unacked_records=5)
    try:
        with ledger.run("r") as session:
            seen = []
            for i in range(23):
                _llm(session, i)
                seen.append(session._hot.unacknowledged)
            assert max(seen) == 4 and 0 in seen  # the 5th unacknowledged record is a barrier
        assert [s.status for s in ledger.steps("r")] == ["completed"] * 23
    finally:
        ledger.close()


def test_unacknowledged_records_are_bounded_by_bytes(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async",
                             max_unacked_bytes=10_000)
    try:
        with ledger.run("r") as session:
            seen = []
            for i in range(12):
                _llm(session, i, size=3000)
                seen.append(session._hot.unacknowledged)
            assert max(seen) <= 3 and seen.count(0) >= 3
        assert len(ledger.steps("r")) == 12
    finally:
        ledger.close()


def test_records_wait_at_a_fail_step_an_approval_and_the_end(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async")
    pending_in_body: list[int] = []

    @agentledger.step(in_doubt="fail")
    def charge() -> int:
        pending_in_body.append(session._hot.unacknowledged)
        return 1

    @agentledger.step
    def fetch(i: int) -> int:
        return i

    try:
        with ledger.run("r") as session:
            fetch(1)
            fetch(2)
            assert session._hot.unacknowledged == 4  # two claims and two outcomes, sent
            charge()
            fetch(3)
            assert session._hot.unacknowledged == 2
            with pytest.raises(agentledger.ApprovalPending):
                session.approval("ok?")
            assert session._hot.unacknowledged == 0
        assert pending_in_body == [0]  # the fail step's claim and all before it: acknowledged
        assert ledger.get_run("r").status == RunStatus.COMPLETED  # type: ignore[union-attr]
        assert len(ledger.steps("r")) == 5
    finally:
        ledger.close()


def test_a_tool_after_a_model_answer_runs_once_the_answer_is_acknowledged(
        redis_url: str, prefix: str) -> None:
    # The answer decided the call (and, in the OpenAI Agents SDK, its key: the call id in it).
    # Lost after the effect, the model would be asked again and might decide otherwise; so
    # the tool's claim waits for the answer (tests/openai_agents: the end-to-end case).
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async")
    in_body: list[int] = []

    def tool(session: agentledger.RunSession, i: int) -> int:
        def body() -> int:
            in_body.append(session._hot.unacknowledged)
            return i
        return session.call(StepCall(kind="tool", name="store", inputs=i, intent=True), body)

    try:
        with ledger.run("r") as session:
            _llm(session, 1)
            _llm(session, 2)
            assert session._hot.unacknowledged == 2
            tool(session, 1)  # its claim acknowledged both answers
            tool(session, 2)  # no answer between: sent without waiting
            _llm(session, 3)
            tool(session, 3)
        assert in_body == [0, 2, 0]
        assert [s.status for s in ledger.steps("r")] == ["completed"] * 6
    finally:
        ledger.close()


def test_a_lost_lease_is_raised_at_the_next_barrier(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async")
    other = Ledger.from_url(redis_url, prefix=prefix)
    try:
        session = ledger.open_run("r")
        token = session.activate()
        _llm(session, 1)
        session.barrier()
        taker = other.open_run("r", on_busy="takeover")
        _llm(session, 2)  # sent; the script refuses it (stale fencing token)
        with pytest.raises(FencedOutError):
            session.barrier()
        assert session.fenced
        session.deactivate(token)
        session.finish(RunStatus.FAILED, error=FencedOutError("x"))
        assert [s.key for s in ledger.steps("r")] == ["llm:chat#1"]
        taker.finish(RunStatus.COMPLETED)
    finally:
        other.close()
        ledger.close()


def test_a_fenced_run_is_not_marked_ended(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async")
    other = Ledger.from_url(redis_url, prefix=prefix)
    try:
        with pytest.raises(FencedOutError), ledger.run("r") as session:
            _llm(session, 1)
            other.open_run("r", on_busy="takeover")
            _llm(session, 2)
        run = other.get_run("r")
        assert run is not None and run.status == RunStatus.RUNNING  # the new owner's
    finally:
        other.close()
        ledger.close()


def test_asyncio_records_are_acknowledged_at_the_end(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async", max_unacked_records=7)

    @agentledger.step
    async def fetch(i: int) -> int:
        return i * 2

    async def main() -> list[int]:
        async with ledger.arun("r") as session:
            out = []
            for i in range(10):
                out.append(await fetch(i))
                assert session._hot.unacknowledged < 7
            return out

    try:
        assert asyncio.run(main()) == [i * 2 for i in range(10)]
        assert ledger.get_run("r").status == RunStatus.COMPLETED  # type: ignore[union-attr]
        assert [s.status for s in ledger.steps("r")] == ["completed"] * 10
        assert asyncio.run(main()) == [i * 2 for i in range(10)]  # replayed
    finally:
        ledger.close()


def test_script_flush_mid_run_loses_no_record(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", appendonly=False).start()
    ledger = Ledger.from_url(server.url, prefix="t", durability="async")
    try:
        with ledger.run("r") as session:
            _llm(session, 1)
            redis.Redis.from_url(server.url).script_flush()  # NOSCRIPT for what follows
            _llm(session, 2)
            _llm(session, 3)
        assert [s.key for s in ledger.steps("r")] == [f"llm:chat#{i}" for i in (1, 2, 3)]
        assert ledger.get_run("r").status == RunStatus.COMPLETED  # type: ignore[union-attr]
    finally:
        ledger.close()
        server.stop()


def test_a_script_is_loaded_once_per_socket_and_again_after_a_flush(tmp_path: Path) -> None:
    """Records go as EVALSHA of a script loaded once over the session's socket, not once per
    batch; after SCRIPT FLUSH the batch that met NOSCRIPT is sent again and the next one loads
    the script again. (A server of its own: its command counts and SCRIPT FLUSH are ours.)"""
    server = RedisServer(tmp_path / "r", appendonly=False).start()
    ledger = Ledger.from_url(server.url, prefix="t", durability="async")
    admin = redis.Redis.from_url(server.url)

    def loads_and_scripts(batch: Any) -> tuple[int, int]:
        admin.config_resetstat()
        batch()
        stats = admin.info("commandstats")
        return (int(stats.get("cmdstat_script|load", {}).get("calls", 0)),
                int(stats.get("cmdstat_evalsha", {}).get("calls", 0)))

    try:
        with ledger.run("r") as session:
            def batch(i: int) -> Any:
                return lambda: (_llm(session, i), session.barrier())

            assert loads_and_scripts(batch(1)) == (1, 1)
            for i in (2, 3, 4):
                assert loads_and_scripts(batch(i)) == (0, 1)  # loaded already
            admin.script_flush()
            assert loads_and_scripts(batch(5)) == (0, 1)  # NOSCRIPT: sent again with EVAL
            assert loads_and_scripts(batch(6)) == (1, 1)  # loaded again
            assert loads_and_scripts(batch(7)) == (0, 1)
        assert [s.key for s in ledger.steps("r")] == [f"llm:chat#{i}" for i in range(1, 8)]
        assert ledger.get_run("r").status == RunStatus.COMPLETED  # type: ignore[union-attr]
    finally:
        admin.close()
        ledger.close()
        server.stop()


def test_durability_is_checked() -> None:
    with pytest.raises(ValueError, match="durability"):
        Ledger(redis.Redis(), durability="fast")


def test_a_joined_level_applies_until_it_is_left(redis_url: str, prefix: str) -> None:
    """An adapter with its own durability= inside a run opened elsewhere (a worker's pipeline)
    records its calls at that level; afterwards the opener's level applies again, and a record
    at 'sync' is acknowledged together with everything sent before it."""
    ledger = Ledger.from_url(redis_url, prefix=prefix)  # the opener: sync
    try:
        with ledger.run("j") as session:
            _llm(session, 0)
            assert session._hot.unacknowledged == 0
            before = session.join_durability("async")
            for i in range(1, 4):
                _llm(session, i)
            assert session._hot.unacknowledged == 3  # sent, not waited for
            session.leave_durability(before)
            assert session.join_durability(None) is None  # no level given: nothing changes
            _llm(session, 4)
            assert session._hot.unacknowledged == 0
            with pytest.raises(ValueError, match="durability must be one of"):
                session.join_durability("fast")
        assert [s.status for s in ledger.steps("j")] == ["completed"] * 5
    finally:
        ledger.close()
