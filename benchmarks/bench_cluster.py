"""A recorded call on a Redis Cluster at each durability, against a raw SET, in the same run.

    python benchmarks/bench_cluster.py [--rounds 21] [--n 100]

Starts its own 3-master, 3-replica cluster on loopback (tests/_cluster.py, AOF everysec) and
measures, taking turns in each round (ratios are the median of each round's ratio to that
round's raw SET through the cluster client):

- raw redis-py cluster `SET` (the baseline), and `SET` + `WAIT 1` pipelined on one node
- live tool step (intent + outcome) and LLM step (outcome only) at `sync`, `replicas=0`
- the same with `replicas=1` (each record and its WAIT in one round trip to the slot's master)
- the same at durability `async` (records pipelined to the slot's master; the barrier, with
  its WAIT when `replicas=1`, is inside the time)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable

from _common import REPO, interleaved_ratios, machine

sys.path.insert(0, str(REPO / "tests"))
from _cluster import Cluster
from redis.cluster import RedisCluster

from _support import tmpdir
from agentledger import Ledger, RunStatus, StepCall

PAYLOAD = "x" * 1024


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--n", type=int, default=100)
    a = p.parse_args()
    cluster = Cluster(tmpdir("albench-clrep-")).start()
    try:
        print("\n".join(report(cluster, a.rounds, a.n)))
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)
    return 0


def report(cluster: Cluster, rounds: int, n: int) -> list[str]:
    url = cluster.url
    raw = RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    ledgers = {(level, replicas): Ledger.from_url(url, prefix="bc", durability=level,
                                                  replicas=replicas, replica_timeout_ms=10_000)
               for level in ("sync", "async") for replicas in (0, 1)}
    # Every run, and the raw keys, on one master: the cases differ only in what they send.
    node = raw.get_node_from_key("bc:{bench-0}:raw")
    node_client = raw.get_redis_connection(node)
    same_master = (f"b{i}" for i in range(10**7)
                   if raw.get_node_from_key(f"bc:{{b{i}}}:run") == node)

    def raw_set(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            raw.set(f"bc:{{bench-0}}:raw:{i}", PAYLOAD)
        return (time.perf_counter() - t0) / k * 1e6

    def raw_set_wait(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            pipe = node_client.pipeline(transaction=False)
            pipe.set(f"bc:{{bench-0}}:raw:{i}", PAYLOAD)
            pipe.execute_command("WAIT", 1, 10_000)
            pipe.execute()
        return (time.perf_counter() - t0) / k * 1e6

    def steps(level: str, replicas: int, intent: bool) -> Callable[[int], float]:
        led = ledgers[level, replicas]

        def case(k: int) -> float:
            run_id = next(same_master)
            s = led.open_run(run_id)
            t0 = time.perf_counter()
            for i in range(k):
                s.call(StepCall(kind="tool" if intent else "llm", name="f", inputs={"i": i},
                                intent=intent), lambda: PAYLOAD)
            s.barrier()
            dt = (time.perf_counter() - t0) / k * 1e6
            s.finish(RunStatus.COMPLETED)
            led.delete_run(run_id)
            return dt

        return case

    cases: dict[str, Callable[[int], float]] = {"raw SET": raw_set,
                                                "raw SET + WAIT 1": raw_set_wait}
    for level in ("sync", "async"):
        for replicas in (0, 1):
            for intent in (True, False):
                name = f"{'tool' if intent else 'LLM'} step, {level}, replicas={replicas}"
                cases[name] = steps(level, replicas, intent)
    res, ratio = interleaved_ratios(cases, "raw SET", rounds, n)
    for led in ledgers.values():
        led.close()
    raw.close()
    lines = [
        "## Redis Cluster: durability levels and replicas",
        "",
        f"`python benchmarks/bench_cluster.py` — {machine()}. A 3-master, 3-replica cluster on "
        f"loopback (AOF everysec); {rounds} rounds of {n} calls, the cases taking turns in "
        "each round; per-call times are medians, ratios the median of each round's ratio to "
        "that round's raw `SET` through redis-py's cluster client; every run and raw key on one "
        "master. 1 KB results.",
        "",
        "| measure | per call | ratio to raw SET |",
        "|---|---|---|",
    ]
    for name in cases:
        lines.append(f"| {name} | {res[name]:.1f} µs | {ratio[name]:.2f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
