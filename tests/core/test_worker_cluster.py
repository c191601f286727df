"""Workers on a real Redis Cluster (3 masters, 3 replicas on loopback): runs spread over the
masters' slots, and a master SIGKILLed mid-run is replaced by its replica while the workers go
on; every run completes."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cluster import Cluster
from _workers import CHILDREN, Workers, effects, wait_for
from worker_app import build

from _support import OFFLINE_ENV, tmpdir
from agentledger import Ledger, RunStatus


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(tmpdir("agentledger-cluster6-"))
    try:
        yield c.start()
    finally:
        c.stop()
        shutil.rmtree(c.base, ignore_errors=True)


def test_workers_ride_out_a_master_failover(cluster: Cluster, tmp_path: Path) -> None:
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(CHILDREN), "AL_URL": cluster.url,
           "AL_PREFIX": "cl", "AL_EFFECTS": str(tmp_path / "effects.jsonl"),
           "AL_LEASE_MS": "3000", "STEP_SLEEP": "0.05"}
    workers = Workers(env, tmp_path)
    ledger = Ledger.from_url(cluster.url, prefix="cl", lease_ms=3000)
    app = build(ledger)
    try:
        workers.start("--concurrency", "3")
        workers.start("--concurrency", "3")
        runs = [app.submit("steps", {"start": i, "count": 6}, run_id=f"c-{i}") for i in range(24)]
        # The queue's shards and the runs are spread over the three masters.
        owners = {cluster.node_of(f"cl:{{q{i}}}:runs").port for i in range(app.queue.shards)}
        assert len(owners) > 1
        victim = cluster.node_of(ledger.keys(runs[0]).run)
        wait_for(lambda: len(app.queue.workers()) == 2, 120, "both workers", workers)
        wait_for(lambda: len(effects(workers)) >= 20, 120, "steps in flight", workers)
        victim.kill()  # SIGKILL: its replica takes over
        cluster.wait_ok()
        for i, rid in enumerate(runs):
            assert app.result(rid, timeout=180) == {"total": i + 6, "run": rid}, workers.log()
            assert ledger.get_run(rid).status == RunStatus.COMPLETED  # type: ignore[union-attr]
        # Replication is asynchronous by default: a record the dead master acknowledged may
        # not have reached its replica, and that step runs again, with the same key.
        by_step: dict[tuple[str, str], list[str]] = defaultdict(list)
        for e in effects(workers):
            by_step[(e["run"], e["step"])].append(e["key"])
        assert len(by_step) == 24 * 6
        for keys in by_step.values():
            assert len(set(keys)) == 1, keys
    finally:
        workers.stop_all()
        ledger.close()
