"""Chaos soak for workers (``nox -s soak``; bounded, prints a summary).

N worker processes run hundreds of runs of a few dozen recorded calls each (the ``steps``
pipeline of tests/core/children/worker_app.py, whose steps log their effect to a file), while
workers are SIGKILLed and restarted at random and Redis is SIGKILLed and restarted on its
append-only file (standalone), then, on a 3+3 Redis Cluster, a master is SIGKILLed and its
replica takes over (once more with ``replicas=1``, the old master rejoining as a replica).
The standalone phase runs at durability ``sync`` and again at ``async``. At the end: every run
completed with the right value, no run lost, and no step's effect under two idempotency keys; steps re-executed (in flight at a kill, or lost with
an unreplicated record at the failover) are counted.

    python benchmarks/soak_workers.py [--runs 200] [--steps 24] [--workers 4] [--minutes 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import REPO

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "core" / "children"))

from _cluster import Cluster
from worker_app import build

from _support import OFFLINE_ENV, RedisServer, tmpdir
from agentledger import Ledger

_apps: dict[int, Any] = {}


class Fleet:
    def __init__(self, url: str, prefix: str, work: Path, n: int,
                 settings: dict[str, str]) -> None:
        self.env = {**os.environ, **OFFLINE_ENV, **settings, "AL_URL": url, "AL_PREFIX": prefix,
                    "AL_EFFECTS": str(work / "effects.jsonl"), "AL_LEASE_MS": "2000",
                    "STEP_SLEEP": "0.002", "PYTHONPATH": str(REPO / "tests/core/children")}
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = [self._start(i) for i in range(n)]
        self.kills = 0

    def _start(self, i: int) -> subprocess.Popen[bytes]:
        log = open(self.work / f"worker-{i}.log", "ab")  # noqa: SIM115
        return subprocess.Popen([sys.executable, "-m", "agentledger", "worker", "worker_app:app",
                                 "--concurrency", "4"], env=self.env, cwd=str(REPO),
                                stdout=log, stderr=subprocess.STDOUT)

    def kill_one(self) -> None:
        i = random.randrange(len(self.procs))
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(10)
        self.kills += 1
        self.procs[i] = self._start(i)

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
            p.wait(10)


def remaining(ledger: Ledger, runs: list[str]) -> list[str]:
    app = _apps.get(id(ledger)) or _apps.setdefault(id(ledger), build(ledger))
    left = []
    for rid in runs:
        try:
            if not app.queue.outcome(rid):
                left.append(rid)
        except Exception:  # Redis down for a moment: count it as not done
            left.append(rid)
    return left


def phase(name: str, url: str, args: argparse.Namespace, disaster: Any, deadline: float,
          durability: str = "sync", replicas: int = 0) -> dict[str, Any]:
    work = tmpdir(f"agentledger-soak-{name}-")
    prefix = f"soak{random.randrange(10**6)}"
    os.environ["AL_EFFECTS"] = str(work / "effects.jsonl")
    fleet = Fleet(url, prefix, work, args.workers,
                  {"AL_DURABILITY": durability, "AL_REPLICAS": str(replicas)})
    ledger = Ledger.from_url(url, prefix=prefix, lease_ms=2000, replicas=replicas)
    app = build(ledger)
    t0 = time.monotonic()
    runs = [app.submit("steps", {"start": i, "count": args.steps}, run_id=f"{name}-{i}")
            for i in range(args.runs)]
    disaster_done = False
    left = runs
    rounds = 0
    try:
        while left and time.monotonic() < deadline:
            time.sleep(random.uniform(0.2, 2 * args.kill_every))
            fleet.kill_one()
            rounds += 1
            if not disaster_done and rounds == 2:
                disaster()
                disaster_done = True
            left = remaining(ledger, left)
        while left and time.monotonic() < deadline:  # no more kills: let them finish
            time.sleep(1)
            left = remaining(ledger, left)
        elapsed = time.monotonic() - t0
        wrong = [rid for i, rid in enumerate(runs) if rid not in left
                 and app.result(rid, timeout=30)["total"] != i + args.steps]
    finally:
        fleet.stop()
    keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    times: dict[tuple[str, str], int] = defaultdict(int)
    for line in (work / "effects.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["phase"] == "start":
            keys[(e["run"], e["step"])].add(e["key"])
            times[(e["run"], e["step"])] += 1
    out = {"phase": name, "durability": durability, "replicas": replicas, "runs": len(runs), "calls": len(runs) * args.steps,
           "completed": len(runs) - len(left), "lost_or_unfinished": len(left),
           "wrong_value": len(wrong), "worker_kills": fleet.kills,
           "disaster": disaster.__doc__ if disaster_done else "none (ended early)",
           "steps_missing": len(runs) * args.steps - len(keys),
           "steps_under_two_keys": sum(1 for k in keys.values() if len(k) > 1),
           "steps_re_executed_same_key": sum(1 for n in times.values() if n > 1),
           "seconds": round(elapsed, 1)}
    ledger.close()
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kill-every", type=float, default=1.5)
    p.add_argument("--minutes", type=float, default=8.0, help="the whole soak's bound")
    p.add_argument("--no-cluster", action="store_true")
    args = p.parse_args()
    end = time.monotonic() + args.minutes * 60
    results = []

    def budget(phases_left: int) -> float:
        return time.monotonic() + (end - time.monotonic()) / phases_left

    phases_left = 2 if args.no_cluster else 4
    server = RedisServer(tmpdir("agentledger-soak-redis-"), appendfsync="always").start()

    def restart_redis() -> None:
        """Redis SIGKILLed and restarted on its AOF"""
        server.restart(down_s=0.5)

    try:
        # At async the records after the last barrier die with Redis: those steps run again,
        # each under its own key (steps_re_executed_same_key), never under a second one.
        for level in ("sync", "async"):
            results.append(phase(f"standalone-{level}", server.url, args, restart_redis,
                                 budget(phases_left), durability=level))
            phases_left -= 1
    finally:
        server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)

    if not args.no_cluster:
        cluster = Cluster(tmpdir("agentledger-soak-cluster-")).start()

        def fail_over() -> None:
            """a cluster master SIGKILLed, its replica took over"""
            victim = cluster.masters()[-1]
            victim.kill()
            cluster.wait_ok()

        def fail_over_and_rejoin() -> None:
            """a cluster master SIGKILLed, its replica took over, the old one rejoined"""
            # With replicas=1 the promoted master has no replica until the old one rejoins:
            # its slots' records fail closed (the runs wait) until then.
            victim = cluster.masters()[-1]
            victim.kill()
            cluster.wait_ok()
            cluster.rejoin(victim)

        try:
            results.append(phase("cluster", cluster.url, args, fail_over, budget(phases_left)))
            phases_left -= 1
            for node in cluster.nodes:  # the node killed above comes back as a replica
                if node.proc is None:
                    cluster.rejoin(node)
            results.append(phase("cluster-replicated", cluster.url, args, fail_over_and_rejoin,
                                 budget(phases_left), replicas=1))
        finally:
            cluster.stop()
            shutil.rmtree(cluster.base, ignore_errors=True)

    cols = list(results[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    bad = any(r["lost_or_unfinished"] or r["wrong_value"] or r["steps_under_two_keys"]
              or r["steps_missing"] for r in results)
    print("SOAK", "FAILED" if bad else "PASSED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
