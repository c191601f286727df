"""Durability "async": what survives a crash is a prefix of what was sent (issue 12).

A run's records go over one connection; Redis applies and logs one connection's commands in
order. So after any crash the run's records are those of the first k steps sent (the k+1-th
possibly only claimed), and running the program again re-does exactly the lost suffix:
replayed steps never run again, lost ones run once more with the same idempotency key. A
killed process loses no step it sent (k is all of them: the records go with replies off, so its
socket closes cleanly); a killed Redis loses the suffix it had not written to its AOF.
"""

from __future__ import annotations

import socket
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


def _abandon(session: RunSession) -> str | None:
    """What a SIGKILL does to the process's side: its sockets close.
    Returns the closed connection's local address as Redis's CLIENT LIST shows it."""
    session.stop_renewing()
    hot = session._hot
    addr = None
    if hot._conn is not None:
        sock = getattr(hot._conn, "_sock", None)
        if sock is not None and sock.family == socket.AF_INET:
            host, port = sock.getsockname()[:2]
            addr = f"{host}:{port}"
        hot._conn.disconnect()
        hot._conn = None
        hot._pending.clear()
    return addr


def _wait_until_gone(ledger: Ledger, addr: str | None) -> None:
    """Redis works through a closed connection's bytes on its own time, then frees the client:
    once the client is gone, what it kept is final."""
    if addr is None:
        return
    client = ledger.redis
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(c.get("addr") == addr for c in client.client_list()):
            return
        time.sleep(0.01)
    raise AssertionError(f"Redis still holds the closed client {addr}")


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
                  keys: dict[str, set[str]], kept: int) -> None:
    session = ledger.open_run(run_id, on_busy="takeover")
    token = session.activate()
    try:
        _run(session, program, executed, keys)
    finally:
        session.deactivate(token)
    assert session.finish(RunStatus.COMPLETED)
    recs = {r.name: r for r in ledger.steps(run_id)}
    steps = [f"{op}{i}" for i, op in enumerate(program) if op != "barrier"]
    for n, name in enumerate(steps):
        assert recs[name].status == "completed", name
        # What Redis kept never runs again; a lost step of the unacknowledged suffix runs once
        # more, always under its one idempotency key.
        assert executed[name] == 1 if n < kept else executed[name] <= 2, name
        assert len(keys[name]) == 1, name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=OPS, cut=st.integers(min_value=0, max_value=30))
def test_a_killed_process_keeps_everything_it_sent(
        redis_url: str, prefix: str, program: list[str], cut: int) -> None:
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
        _wait_until_gone(ledger, _abandon(session))
        # Nothing lost: the records went with replies off, so the closed socket had nothing
        # unread, closed with a FIN, and Redis applied everything the session had sent.
        kept = _check_prefix(ledger, program, run_id)
        assert kept == sum(1 for op in program[:cut] if op != "barrier")
        _finish_again(ledger, run_id, program, executed, keys, kept)
    finally:
        ledger.delete_run(run_id, force=True)
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
