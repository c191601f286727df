"""Durability "replicated" on a real Redis Cluster (3 masters, 3 replicas on loopback, started
by the test and stopped by pid): each record and its WAIT go over one connection to the master
owning the run's slot; a replica that does not answer fails the record closed; a master
SIGKILLed mid-run and replaced by its replica loses nothing acknowledged, and no completed
effect runs again. The default (no replicas=) can lose acknowledged records: the control."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _cluster import Cluster
from _workers import CHILDREN, Workers, effects, wait_for
from worker_app import build

import agentledger
from _support import OFFLINE_ENV, RedisServer, tmpdir
from agentledger import Ledger, LedgerUnavailableError, RunStatus

# WAIT's timeout where the replica is running: longer than any scheduling delay on a loaded
# machine; a replica that never answers is tested with a short one.
PATIENT = 60_000

charged: list[int] = []


@agentledger.step
def charge(n: int) -> int:
    charged.append(n)
    return n * 10


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(tmpdir("agentledger-clrep-"))
    try:
        yield c.start()
    finally:
        for n in c.nodes:
            if n.proc is not None:
                os.kill(n.proc.pid, signal.SIGCONT)
        c.stop()
        shutil.rmtree(c.base, ignore_errors=True)


def records(node: RedisServer, ledger: Ledger, run_id: str) -> dict[int, dict[str, Any]]:
    """The run's step records as ``node`` has them (a replica too): seq -> metadata."""
    client = redis.Redis(port=node.port, socket_timeout=5)
    client.execute_command("READONLY")
    raw = client.hgetall(ledger.keys(run_id).steps)
    metas = [json.loads(v) for f, v in raw.items() if f.startswith(b"m:")]
    return {m["seq"]: m for m in metas}


def test_each_record_is_on_the_replica_when_the_call_returns(cluster: Cluster) -> None:
    charged.clear()
    ledger = Ledger.from_url(cluster.url, prefix="rc", replicas=1, replica_timeout_ms=PATIENT)
    runs = [f"spread-{i}" for i in range(6)]
    assert len({cluster.node_of(ledger.keys(r).run).port for r in runs}) > 1
    for rid in runs:
        replica = cluster.replica_of(cluster.node_of(ledger.keys(rid).run))
        with ledger.run(rid):
            for i in range(3):
                charge(i)
                # WAIT returned 1 on the master's connection: the replica has the outcome.
                assert records(replica, ledger, rid)[i + 1]["status"] == "completed"
    assert charged == [0, 1, 2] * 6
    ledger.close()


def test_a_stopped_replica_fails_the_record_closed(cluster: Cluster) -> None:
    charged.clear()
    ledger = Ledger.from_url(cluster.url, prefix="rc", replicas=1, replica_timeout_ms=PATIENT)
    replica = cluster.replica_of(cluster.node_of(ledger.keys("stop").run))
    assert replica.proc is not None
    session = ledger.open_run("stop")  # the lease itself is replicated
    token = session.activate()
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        ledger.require_replicas(1, 200)  # a stopped replica never answers: no need to wait long
        with pytest.raises(LedgerUnavailableError, match="0 of 1 replicas"):
            charge(1)
        assert charged == []  # the body never ran: its intent was not replicated
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
        session.deactivate(token)
        session.stop_renewing()
    ledger.close()


def test_async_records_with_a_stopped_replica_fail_at_the_barrier(cluster: Cluster) -> None:
    charged.clear()
    ledger = Ledger.from_url(cluster.url, prefix="rc", replicas=1, replica_timeout_ms=PATIENT,
                             durability="async")
    replica = cluster.replica_of(cluster.node_of(ledger.keys("abar").run))
    assert replica.proc is not None
    session = ledger.open_run("abar")
    token = session.activate()
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        ledger.require_replicas(1, 200)
        charge(1)  # sent, not acknowledged yet (durability async)
        assert session._hot.unacknowledged == 2
        with pytest.raises(LedgerUnavailableError, match="0 of 1 replicas"):
            session.barrier()
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
        session.deactivate(token)
        session.stop_renewing()
    ledger.close()


def test_async_pipelines_a_runs_records_to_its_master_in_order(cluster: Cluster) -> None:
    charged.clear()
    ledger = Ledger.from_url(cluster.url, prefix="rc", durability="async",
                             max_unacked_records=100)
    master = cluster.node_of(ledger.keys("pipe").run)
    with ledger.run("pipe") as session:
        for i in range(5):
            charge(i)
        # Ten records sent and no reply read yet, and the master has applied all of them:
        # they went to the slot's master on the session's connection, without a round trip
        # each; the barrier reads the ten replies at once.
        assert session._hot.unacknowledged == 10
        on_master = records(master, ledger, "pipe")
        assert [on_master[s]["status"] for s in range(1, 6)] == ["completed"] * 5
        # In the order sent: the n-th step's record is the n-th the master applied.
        assert [on_master[s]["key"].rsplit("#", 1)[1] for s in range(1, 6)] == [
            "1", "2", "3", "4", "5"]
        session.barrier()
        assert session._hot.unacknowledged == 0
    with ledger.run("pipe") as s:
        assert [charge(i) for i in range(5)] == [0, 10, 20, 30, 40]
        assert s.replayed == 5
    assert charged == [0, 1, 2, 3, 4]
    ledger.close()


def test_a_failover_mid_run_loses_no_acknowledged_record(cluster: Cluster) -> None:
    charged.clear()
    # A long lease: its retry budget (half of it) covers the failover of the held connection.
    ledger = Ledger.from_url(cluster.url, prefix="rc", replicas=1, replica_timeout_ms=PATIENT,
                             lease_ms=20_000)
    master = cluster.node_of(ledger.keys("fo").run)
    replica = cluster.replica_of(master)
    session = ledger.open_run("fo")
    token = session.activate()
    try:
        assert [charge(i) for i in range(5)] == [0, 10, 20, 30, 40]  # acknowledged
        master.kill()  # SIGKILL, mid-run: the session's connection is to this node
        cluster.take_over(replica)
        promoted = records(replica, ledger, "fo")
        assert [promoted[s]["status"] for s in range(1, 6)] == ["completed"] * 5
        cluster.rejoin(master)  # the old master comes back as the new one's replica
        # The same session goes on: its connection to the dead master fails, the slot map is
        # read again and its records go to the promoted master.
        assert [charge(i) for i in range(5, 8)] == [50, 60, 70]
    finally:
        session.deactivate(token)
    session.finish(RunStatus.COMPLETED)
    with ledger.run("fo") as s:
        assert [charge(i) for i in range(8)] == [0, 10, 20, 30, 40, 50, 60, 70]
        assert s.replayed == 8
    assert charged == [0, 1, 2, 3, 4, 5, 6, 7]  # no completed effect ran again
    ledger.close()


@agentledger.step
async def acharge(n: int) -> int:
    charged.append(n)
    return n * 10


@pytest.mark.parametrize("level", ["sync", "async"])
async def test_asyncio_records_survive_a_failover_mid_run(cluster: Cluster, level: str) -> None:
    charged.clear()
    ledger = Ledger.from_url(cluster.url, prefix="ra", replicas=1, replica_timeout_ms=PATIENT,
                             lease_ms=20_000, durability=level)
    master = cluster.node_of(ledger.keys("afo").run)
    replica = cluster.replica_of(master)
    session = await ledger.aopen_run("afo")
    token = session.activate()
    try:
        assert [await acharge(i) for i in range(4)] == [0, 10, 20, 30]
        await session.abarrier()  # at async: acknowledged here, with one WAIT
        on_replica = records(replica, ledger, "afo")
        assert [on_replica[s]["status"] for s in range(1, 5)] == ["completed"] * 4
        master.kill()
        cluster.take_over(replica)
        cluster.rejoin(master)
        if level == "sync":
            # The session's connection was to the dead master: the record is sent again to
            # the promoted one, and the session goes on.
            assert [await acharge(i) for i in range(4, 6)] == [40, 50]
        else:
            # A record sent without waiting is not sent again: its connection broke under it
            # (at the claim, or at the outcome once the body ran), so the run stops (closed,
            # never a silent reconnect) and resumes below; the step in flight runs once more.
            with pytest.raises(LedgerUnavailableError, match="unreachable"):
                await acharge(4)
    finally:
        session.deactivate(token)
    if level == "sync":
        await session.afinish(RunStatus.COMPLETED)
    else:  # the session stopped at the broken write: not marked ended, it resumes below
        with pytest.raises(LedgerUnavailableError, match="unreachable"):
            await session.afinish(RunStatus.FAILED)
    async with ledger.arun("afo") as again:
        assert [await acharge(i) for i in range(6)] == [0, 10, 20, 30, 40, 50]
        assert again.replayed == (6 if level == "sync" else 4)
    # No completed effect ran again; at async the one in flight at the failover at most once.
    assert charged in ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 4, 5])
    assert level == "async" or charged == [0, 1, 2, 3, 4, 5]
    await ledger.aclose()
    ledger.close()


def test_without_replicas_a_failover_can_lose_acknowledged_records(cluster: Cluster) -> None:
    """The control: the same failover with the default durability, the replica behind."""
    charged.clear()
    ledger = Ledger.from_url(cluster.url, prefix="rc", lease_ms=2000)
    master = cluster.node_of(ledger.keys("lost").run)
    replica = cluster.replica_of(master)
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)  # the replica falls behind,
    redis.Redis(port=master.port).client_kill_filter(_type="slave")  # its link is cut
    with ledger.run("lost"):
        assert [charge(i) for i in range(3)] == [0, 10, 20]  # acknowledged by the master only
    master.kill()
    os.kill(replica.proc.pid, signal.SIGCONT)
    cluster.take_over(replica)
    assert records(replica, ledger, "lost") == {}  # every acknowledged record is gone
    ledger.close()


def test_workers_with_replicas_ride_out_a_master_failover(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(CHILDREN), "AL_URL": cluster.url,
           "AL_PREFIX": "cw", "AL_EFFECTS": str(tmp_path / "effects.jsonl"),
           "AL_LEASE_MS": "4000", "STEP_SLEEP": "0.05", "AL_REPLICAS": "1",
           "AL_REPLICA_TIMEOUT_MS": "5000", "AL_LOG_ACKED": "1", "AL_RETRIES": "50"}
    workers = Workers(env, tmp_path)
    ledger = Ledger.from_url(cluster.url, prefix="cw", lease_ms=4000, replicas=1,
                             replica_timeout_ms=PATIENT)
    app = build(ledger)
    try:
        workers.start("--concurrency", "3")
        workers.start("--concurrency", "3")
        runs = [app.submit("steps", {"start": i, "count": 6}, run_id=f"w-{i}")
                for i in range(18)]
        victim = cluster.node_of(ledger.keys(runs[0]).run)
        on_victim = [r for r in runs if cluster.node_of(ledger.keys(r).run) == victim]
        replica = cluster.replica_of(victim)
        wait_for(lambda: sum(e["run"] in on_victim for e in effects(workers, "acked")) >= 12,
                 120, "steps acknowledged on the victim's slots", workers)
        victim.kill()  # SIGKILL mid-run
        acked_before = {(e["run"], e["step"]) for e in effects(workers, "acked")}
        cluster.take_over(replica)
        # Every step the workers saw acknowledged is on the promoted master (read before the
        # old master rejoins: nothing can have been copied back).
        promoted: dict[str, set[int]] = {}
        for rid in on_victim:
            promoted[rid] = {s for s, m in records(replica, ledger, rid).items()
                             if m["status"] == "completed"}
        acked_on_victim = [(r, s) for r, s in acked_before if r in on_victim]
        assert acked_on_victim
        for rid, step in acked_on_victim:
            assert int(step[1:]) in promoted[rid], (rid, step, promoted[rid])
        cluster.rejoin(victim)  # WAIT needs a replica again: the old master comes back as one
        for i, rid in enumerate(runs):
            assert app.result(rid, timeout=240) == {"total": i + 6, "run": rid}, workers.log()
            assert ledger.get_run(rid).status == RunStatus.COMPLETED  # type: ignore[union-attr]
        by_step: dict[tuple[str, str], list[str]] = defaultdict(list)
        for e in effects(workers):
            by_step[(e["run"], e["step"])].append(e["key"])
        assert len(by_step) == 18 * 6
        for step, keys in by_step.items():
            if step in acked_before:
                assert len(keys) == 1, (step, keys)  # a completed effect never runs again
            else:  # in flight at the kill: at most once more, with the same key
                assert len(keys) <= 2 and len(set(keys)) == 1, (step, keys)
    finally:
        workers.stop_all()
        ledger.close()
