"""Redis Cluster: a run's keys share one slot, and the ledger works through a cluster client.
The test starts its own three-node cluster on free loopback ports and stops it by pid."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import key_slot

import agentledger
from _support import RedisServer, free_cluster_port, tmpdir
from agentledger import ApprovalPending, Ledger, RunStatus

SLOTS = 16384


@pytest.fixture
def cluster_url() -> Iterator[str]:
    base = tmpdir("agentledger-cluster-")
    nodes = [RedisServer(base / str(i), appendonly=False, port=free_cluster_port(),
                         extra=["--cluster-enabled", "yes",
                                "--cluster-config-file", str(base / str(i) / "nodes.conf")])
             for i in range(3)]
    try:
        for n in nodes:
            n.start()
        clients = [redis.Redis(port=n.port) for n in nodes]
        third = SLOTS // 3
        for i, c in enumerate(clients):
            lo, hi = i * third, SLOTS - 1 if i == 2 else (i + 1) * third - 1
            c.execute_command("CLUSTER ADDSLOTS", *range(lo, hi + 1))
        for n in nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", n.port)
        deadline = time.monotonic() + 30
        while not all(c.execute_command("CLUSTER INFO").get("cluster_state") == "ok"
                      for c in clients):
            assert time.monotonic() < deadline, "the test cluster did not form"
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for n in nodes:
            n.kill()
        shutil.rmtree(base, ignore_errors=True)


def test_a_run_lives_in_one_slot(ledger: Ledger) -> None:
    k = ledger.keys("order-42")
    assert len({key_slot(x.encode()) for x in (k.run, k.steps, k.keyset, k.extra("lg:cp"))}) == 1


def test_steps_approvals_and_replay_on_a_cluster(cluster_url: str, tmp_path: Path) -> None:
    ledger = Ledger.from_url(cluster_url, prefix="c")
    assert ledger.cluster
    calls: list[int] = []

    @agentledger.step
    def charge(n: int) -> int:
        calls.append(n)
        return n * 10

    runs = [f"run-{i}" for i in range(12)]  # spread over the three nodes
    for rid in runs:
        with ledger.run(rid):
            charge(1)
            charge(2)
    for rid in runs:
        with ledger.run(rid) as s:
            assert [charge(1), charge(2)] == [10, 20]
            assert s.replayed == 2
    assert len(calls) == 24
    with pytest.raises(ApprovalPending), ledger.run("wait"):
        agentledger.approval("ship", {"n": 1})
    ledger.decide("wait", by="ann")
    with ledger.run("wait"):
        assert agentledger.approval("ship", {"n": 1}).by == "ann"
    assert {r.status for r in ledger.list_runs()} == {RunStatus.COMPLETED}
    assert ledger.delete_run("run-0") == 2
    ledger.close()


async def test_async_on_a_cluster(cluster_url: str) -> None:
    ledger = Ledger.from_url(cluster_url, prefix="c")

    @agentledger.step
    async def fetch(n: int) -> int:
        return n + 1

    for _ in range(2):
        async with ledger.arun("a") as s:
            assert await fetch(1) == 2
    assert s.replayed == 1
    run = await ledger.aget_run("a")
    assert run is not None and run.status == "completed"
    await ledger.aclose()
    ledger.close()
