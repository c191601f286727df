"""Durability "async": what survives a crash is a prefix of what was sent (issue 12).

A run's records go over one connection; Redis applies and logs one connection's commands in
order. So after any crash the run's records are those of the first k steps sent (the k+1-th
possibly only claimed), and running the program again re-does exactly the lost suffix:
replayed steps never run again, lost ones run once more with the same idempotency key.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentledger
from _support import RedisServer
from agentledger import Ledger, RunSession, RunStatus, StepCall

# A program: one op per position; "llm" (outcome only), "tool" (rerun: claim + outcome),
# "fail" (a 'fail' step: a barrier before its body), "barrier".
OPS = st.lists(st.sampled_from(["llm", "tool", "tool", "fail", "barrier"]), min_size=1,
               max_size=30)


def _run(session: RunSession, program: list[str], executed: Counter[str], keys: dict[str, set[str]],
         stop_after: int | None = None) -> None:
    for i, op in enumerate(program):
        if stop_after is not None and i == stop_after:
            return
        if op == "barrier":
            session.barrier()
            continue
        name = f"{op}{i}"
        call = StepCall(kind="llm" if op == "llm" else "tool", name=name, inputs=i,
                        intent=op != "llm", policy="fail" if op == "fail" else None)

        def body(name: str = name) -> str:
            executed[name] += 1
            keys.setdefault(name, set()).add(agentledger.current_idempotency_key() or "")
            return name * 50

        assert session.call(call, body) == name * 50


def _abandon(session: RunSession) -> None:
    """What a SIGKILL does to the process's side: its sockets close, unread replies and all.
    Everything it wrote is already in the kernel."""
    session.stop_renewing()
    hot = session._hot
    if hot._conn is not None:
        hot._conn.disconnect()
        hot._conn = None
        hot._pending.clear()


def _check_prefix(ledger: Ledger, program: list[str], run_id: str) -> int:
    """The run's records are the first k steps sent, in order; returns k."""
    sent = [f"{op}{i}" for i, op in enumerate(program) if op != "barrier"]
    recs = sorted(ledger.steps(run_id), key=lambda r: r.seq)
    names = [r.name for r in recs]
    assert names == sent[: len(names)], (names, sent)
    # Only the last record may lack its outcome (claimed, then the crash).
    assert all(r.status == "completed" for r in recs[:-1])
    return sum(1 for r in recs if r.status == "completed")


def _finish_again(ledger: Ledger, run_id: str, program: list[str], executed: Counter[str],
                  keys: dict[str, set[str]]) -> None:
    session = ledger.open_run(run_id, on_busy="takeover")
    token = session.activate()
    try:
        _run(session, program, executed, keys)
    finally:
        session.deactivate(token)
    assert session.finish(RunStatus.COMPLETED)
    recs = {r.name: r for r in ledger.steps(run_id)}
    for i, op in enumerate(program):
        if op != "barrier":
            name = f"{op}{i}"
            # Everything the killed process sent was kept: no step ran twice.
            assert recs[name].status == "completed" and executed[name] == 1, name
            assert len(keys[name]) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=OPS, cut=st.integers(min_value=0, max_value=30))
def test_a_killed_process_loses_nothing_it_sent(redis_url: str, prefix: str, program: list[str],
                                                cut: int) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async", max_unacked_records=8)
    run_id = f"p{uuid.uuid4().hex[:12]}"
    executed: Counter[str] = Counter()
    keys: dict[str, set[str]] = {}
    try:
        session = ledger.open_run(run_id)
        token = session.activate()
        try:
            _run(session, program, executed, keys, stop_after=cut)
        finally:
            session.deactivate(token)
        _abandon(session)
        sent = [f"{op}{i}" for i, op in enumerate(program[:cut]) if op != "barrier"]
        # Redis works through the closed connection's last bytes on its own time; a restart
        # takes longer than that. Wait for it here (bounded), then check nothing was lost.
        deadline = time.monotonic() + 5
        while (sum(r.status == "completed" for r in ledger.steps(run_id)) < len(sent)
               and time.monotonic() < deadline):
            time.sleep(0.005)
        # A SIGKILLed client loses nothing it wrote: every step it ran is recorded.
        assert _check_prefix(ledger, program, run_id) == len(sent)
        _finish_again(ledger, run_id, program, executed, keys)
    finally:
        ledger.delete_run(run_id)
        ledger.close()


@pytest.mark.slow
def test_redis_killed_mid_run_keeps_a_prefix_and_the_suffix_is_redone(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", appendfsync="always").start()
    program = (["llm", "tool"] * 60)
    big = "y" * 20_000  # big outcomes: Redis is still working through them when killed
    ledger = Ledger.from_url(server.url, prefix="t", durability="async",
                             max_unacked_records=1000, max_unacked_bytes=64 << 20, redis_retries=1)
    executed: Counter[str] = Counter()
    keys: dict[str, set[str]] = {}
    try:
        session = ledger.open_run("r")
        token = session.activate()
        for i, op in enumerate(program):
            call = StepCall(kind=op, name=f"{op}{i}", inputs=i, intent=op == "tool")

            def body(i: int = i, op: str = op) -> str:
                executed[f"{op}{i}"] += 1
                keys.setdefault(f"{op}{i}", set()).add(agentledger.current_idempotency_key() or "")
                return big

            session.call(call, body)
            if i == 59:
                session.barrier()  # acknowledged: these survive the Redis crash (AOF always)
        server.kill()  # SIGKILL with up to 120 steps' records unacknowledged
        session.deactivate(token)
        with pytest.raises(agentledger.LedgerUnavailableError):
            session.barrier()
        session.stop_renewing()
        server.start()
        k = _check_prefix(ledger, program, "r")
        assert k >= 60
        before = Counter(executed)
        session = ledger.open_run("r", on_busy="takeover")
        token = session.activate()
        _run_named(session, program, executed, keys, big)
        session.deactivate(token)
        assert session.finish(RunStatus.COMPLETED)
        recs = sorted(ledger.steps("r"), key=lambda r: r.seq)
        assert [r.name for r in recs] == [f"{op}{i}" for i, op in enumerate(program)]
        for j, r in enumerate(recs):
            # The prefix that survived was not run again; the lost suffix was, once, same key.
            assert executed[r.name] == (1 if j < k else 2), (j, k, r.name)
            assert len(keys[r.name]) == 1
        assert before == Counter({f"{op}{i}": 1 for i, op in enumerate(program)})
    finally:
        ledger.close()
        server.stop()


def _run_named(session: RunSession, program: list[str], executed: Counter[str],
               keys: dict[str, set[str]], big: str) -> None:
    for i, op in enumerate(program):
        def body(i: int = i, op: str = op) -> str:
            executed[f"{op}{i}"] += 1
            keys.setdefault(f"{op}{i}", set()).add(agentledger.current_idempotency_key() or "")
            return big

        session.call(StepCall(kind=op, name=f"{op}{i}", inputs=i, intent=op == "tool"), body)
