"""Durability "replicated" (``Ledger(replicas=1)``): every record is acknowledged by a replica
before the call returns, so a failover to that replica loses nothing acknowledged; a replica
that does not answer fails the call closed. The default (asynchronous replication) loses what
the dead master acknowledged and had not sent. A master and a replica of the test's own."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator

import pytest
import redis

import agentledger
from _support import RedisServer, tmpdir
from agentledger import Ledger, LedgerUnavailableError
from agentledger._queue import app_key


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    base = tmpdir("agentledger-replica-")
    master = RedisServer(base / "m", appendonly=False,
                         extra=["--repl-diskless-sync-delay", "0"]).start()
    replica = RedisServer(base / "r", appendonly=False,
                          extra=["--replicaof", "127.0.0.1", str(master.port)]).start()
    client = redis.Redis(port=replica.port)
    deadline = time.monotonic() + 30
    while client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    try:
        yield master, replica
    finally:
        if replica.proc is not None:
            os.kill(replica.proc.pid, signal.SIGCONT)
        master.kill()
        replica.kill()
        shutil.rmtree(base, ignore_errors=True)


effects: list[int] = []
# WAIT's timeout where the replica is running: longer than any scheduling delay, shorter than
# pytest's timeout, so a replica that never answers still ends the test.
PATIENT = 60_000


@agentledger.step
def charge(n: int) -> int:
    effects.append(n)
    return n * 10


def fail_over(master: RedisServer, replica: RedisServer) -> Ledger:
    master.kill()  # SIGKILL
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGCONT)
    redis.Redis(port=replica.port).execute_command("REPLICAOF", "NO", "ONE")
    return Ledger.from_url(replica.url, prefix="rep", lease_ms=2000)


def test_with_replicas_a_failover_loses_nothing_acknowledged(
        pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    effects.clear()
    ledger = Ledger.from_url(master.url, prefix="rep", replicas=1, replica_timeout_ms=PATIENT,
                             lease_ms=2000)
    session = ledger.open_run("r1")
    token = session.activate()
    assert [charge(i) for i in range(5)] == [0, 10, 20, 30, 40]
    session.deactivate(token)
    session.stop_renewing()  # the process "dies" here, the master right after it
    promoted = fail_over(master, replica)
    with promoted.run("r1") as s:  # the lease expired with the master's keys
        assert [charge(i) for i in range(5)] == [0, 10, 20, 30, 40]
        assert s.replayed == 5
    assert effects == [0, 1, 2, 3, 4]  # no completed effect ran again
    promoted.close()


def test_a_replica_that_does_not_answer_fails_the_step_closed(
        pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    effects.clear()
    assert replica.proc is not None
    # A running replica acknowledges when the machine lets it run: no deadline on the lease's
    # record (a loaded machine can take longer than any short one). PATIENT only bounds a hang.
    ledger = Ledger.from_url(master.url, prefix="rep", replicas=1, replica_timeout_ms=PATIENT)
    session = ledger.open_run("r2")  # the lease is replicated
    token = session.activate()
    os.kill(replica.proc.pid, signal.SIGSTOP)
    ledger.require_replicas(1, 200)  # a stopped replica never acknowledges: no need to wait long
    with pytest.raises(LedgerUnavailableError, match="0 of 1 replicas"):
        charge(1)
    assert effects == []  # the body never ran: its intent was not replicated
    session.deactivate(token)
    session.stop_renewing()
    os.kill(replica.proc.pid, signal.SIGCONT)


def test_the_default_loses_what_the_master_had_not_sent(
        pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    effects.clear()
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)  # the replica falls behind,
    redis.Redis(port=master.port).client_kill_filter(_type="slave")  # its link is cut
    ledger = Ledger.from_url(master.url, prefix="rep", lease_ms=2000)
    with ledger.run("r3"):
        charge(7)  # acknowledged by the master only
    promoted = fail_over(master, replica)  # the master dies before the replica is back
    assert promoted.get_run("r3") is None  # lost in the failover
    promoted.close()


def test_replicas_are_checked() -> None:
    with pytest.raises(ValueError, match="replicas must be"):
        Ledger(url="redis://127.0.0.1:1/0", replicas=-1)


def test_a_submitted_run_is_on_the_replica_when_submit_returns(
        pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    ledger = Ledger.from_url(master.url, prefix="rep", replicas=1, replica_timeout_ms=PATIENT)
    app = agentledger.App(ledger)

    @app.pipeline("echo")
    def echo(input: dict[str, int], run: agentledger.RunSession) -> dict[str, int]:
        return input

    app.submit("echo", {"x": 1}, run_id="sub")
    on_replica = redis.Redis(port=replica.port)
    assert on_replica.exists(app_key("rep", "sub"))  # the input, and the queue entry
    assert on_replica.xlen(app.queue.stream(app.queue.shard_of("sub"))) == 1
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    ledger.require_replicas(1, 200)
    with pytest.raises(LedgerUnavailableError, match="0 of 1 replicas"):
        app.submit("echo", {"x": 2}, run_id="sub2")  # never acknowledged unreplicated
    os.kill(replica.proc.pid, signal.SIGCONT)
    ledger.close()
