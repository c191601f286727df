"""Worker throughput: recorded calls per second against the number of worker processes.

The same pipeline on both sides: a run of STEPS steps, each a recorded call that returns a
small value. agentledger: `agentledger worker` processes (concurrency 4 each) on one Redis
(append-only file, fsync always) and on a 3+3 Redis Cluster of our own; DBOS 3.4: processes
listening to a DBOS queue (worker concurrency 4) on PostgreSQL 15 (fsync on commit), runs
enqueued with DBOSClient. Both sides: runs submitted at once, clock stopped when the last ends.

    python benchmarks/bench_workers.py [--runs 200] [--steps 20] [--procs 1,2,4] [--rounds 3]
    (DBOS: pip install dbos 'psycopg[binary]' in .venv-dbos; BENCH_PG_URL, default
     postgresql://postgres@127.0.0.1:5432/test)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DBOS_PYTHON = REPO / ".venv-dbos" / "bin" / "python"
CONCURRENCY = 4


# ---- the pipeline, agentledger side (imported by the worker processes) ----------------------
def make_app() -> Any:
    import agentledger
    from agentledger import App, Ledger

    ledger = Ledger.from_url(os.environ["AL_URL"], prefix=os.environ["AL_PREFIX"])
    app = App(ledger)

    @agentledger.step
    def call(i: int) -> dict[str, int]:
        return {"i": i, "sq": i * i}

    @app.pipeline("bench")
    def bench(steps: int, run: Any) -> int:
        return sum(call(i)["sq"] for i in range(steps))

    return app


if os.environ.get("AL_BENCH_WORKER"):
    app = make_app()


def _wait_all(done: Any, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while done() < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done()} of {n} runs ended")
        time.sleep(0.02)


REDIS_CPU: dict[int, float] = {}  # processes -> recorded calls per second of Redis CPU


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def agentledger_rate(url: str, procs: int, runs: int, steps: int) -> float:
    import redis

    from agentledger import App, Ledger

    prefix = f"bw{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "AL_URL": url, "AL_PREFIX": prefix, "AL_BENCH_WORKER": "1",
           "PYTHONPATH": str(REPO / "benchmarks")}
    workers = [subprocess.Popen([sys.executable, "-m", "agentledger", "worker", "bench_workers:app",
                                 "--concurrency", str(CONCURRENCY)], env=env, cwd=str(REPO),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(procs)]
    ledger = Ledger.from_url(url, prefix=prefix)
    app = App(ledger)
    app.pipeline("bench")(lambda steps, run: None)  # only its name is needed to submit
    try:
        _wait_all(lambda: len(app.queue.workers()), procs, 120)
        ids = [f"r{i}" for i in range(runs)]
        cpu0 = None if ledger.cluster else _redis_cpu(ledger.redis)
        t0 = time.perf_counter()
        for rid in ids:
            app.submit("bench", steps, run_id=rid)
        active = [app.queue.active(s) for s in range(app.queue.shards)]
        r: Any = ledger.redis
        _wait_all(lambda: runs - sum(int(r.zcard(k)) for k in active), runs)
        elapsed = time.perf_counter() - t0
        if cpu0 is not None:
            REDIS_CPU[procs] = runs * steps / (_redis_cpu(ledger.redis) - cpu0)
        assert app.result(ids[-1], timeout=5) == sum(i * i for i in range(steps))
    finally:
        for w in workers:
            w.send_signal(signal.SIGKILL)
            w.wait(10)
        if not ledger.cluster:
            client = redis.Redis.from_url(url)
            for k in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(k)
        ledger.close()
    return runs * steps / elapsed


def bytes_per_call(server: Any, calls: int = 2000) -> dict[str, float]:
    """Memory and append-only file bytes per recorded call of the bench pipeline's step."""
    import redis

    import agentledger
    from agentledger import Ledger

    ledger = Ledger.from_url(server.url, prefix="bytes")
    client = redis.Redis.from_url(server.url)

    @agentledger.step
    def call(i: int) -> dict[str, int]:
        return {"i": i, "sq": i * i}

    def aof() -> int:
        return sum(f.stat().st_size for f in (server.dir / "appendonlydir").iterdir())

    mem0, aof0 = int(client.info("memory")["used_memory"]), aof()
    for r in range(10):
        with ledger.run(f"bytes-{r}"):
            for i in range(calls // 10):
                call(i)
    out = {"memory": (int(client.info("memory")["used_memory"]) - mem0) / calls,
           "steps hash": int(client.memory_usage(ledger.keys("bytes-0").steps, samples=0) or 0)
           / (calls // 10),
           "AOF": (aof() - aof0) / calls}
    ledger.close()
    client.close()
    return out


# ---- DBOS side (runs in .venv-dbos) --------------------------------------------------------
def dbos_worker(schema: str) -> None:
    from dbos import DBOS

    DBOS(config={"name": "albench", "system_database_url": PG_URL, "dbos_system_schema": schema})

    @DBOS.step()
    def call(i: int) -> dict[str, int]:
        return {"i": i, "sq": i * i}

    @DBOS.workflow(name="bench")
    def bench(steps: int) -> int:
        return sum(call(i)["sq"] for i in range(steps))

    DBOS.launch()
    DBOS.register_queue("bench", worker_concurrency=CONCURRENCY, polling_interval_sec=0.05)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def dbos_rate(procs: int, runs: int, steps: int) -> float:
    import psycopg
    from dbos import DBOS, DBOSClient, EnqueueOptions

    schema = f"albench_{uuid.uuid4().hex[:6]}"
    DBOS(config={"name": "albench", "system_database_url": PG_URL, "dbos_system_schema": schema})
    DBOS.launch()  # creates the schema; this process runs no queue
    DBOS.destroy()
    workers = [subprocess.Popen([sys.executable, __file__, "--dbos-worker", schema],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for _ in range(procs)]
    client = DBOSClient(system_database_url=PG_URL, dbos_system_schema=schema)
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        handles = [client.enqueue(EnqueueOptions(workflow_name="bench", queue_name="bench"), steps)
                   for _ in range(runs)]
        results = [h.get_result() for h in handles]
        elapsed = time.perf_counter() - t0
        assert results[-1] == sum(i * i for i in range(steps))
    finally:
        for w in workers:
            w.send_signal(signal.SIGKILL)
            w.wait(10)
        client.destroy()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return runs * steps / elapsed


# ---- report ------------------------------------------------------------------------------
def dbos_once(procs: int, runs: int, steps: int) -> float | str:
    """One DBOS measurement in .venv-dbos: its rate, or why it could not run."""
    if not DBOS_PYTHON.exists():
        return f"not run: {DBOS_PYTHON} is missing"
    proc = subprocess.run([str(DBOS_PYTHON), __file__, "--dbos", "--runs", str(runs),
                           "--steps", str(steps), "--procs", str(procs)],
                          capture_output=True, text=True, timeout=1800, cwd=str(REPO))
    lines = [x for x in proc.stdout.splitlines() if x.startswith("DBOS ")]
    if not lines:
        return f"failed: {(proc.stderr or proc.stdout).strip().splitlines()[-3:]}"
    return float(json.loads(lines[-1][5:])[str(procs)])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--procs", default="1,2,4")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds; in each, every setup is measured once, next to the others")
    p.add_argument("--dbos-worker")
    p.add_argument("--dbos", action="store_true", help="(internal) measure the DBOS side")
    p.add_argument("--no-cluster", action="store_true")
    a = p.parse_args()
    if a.dbos_worker:
        dbos_worker(a.dbos_worker)
        return 0
    procs = [int(x) for x in a.procs.split(",")]
    if a.dbos:
        print("DBOS " + json.dumps({n: dbos_rate(n, a.runs, a.steps) for n in procs}))
        return 0

    sys.path.insert(0, str(REPO / "tests"))
    from _cluster import Cluster

    from _support import RedisServer, tmpdir

    one, clustered, dbos = "agentledger, one Redis (AOF fsync always)", \
        "agentledger, Redis Cluster 3+3 (AOF fsync always)", "DBOS 3.4 queue, PostgreSQL 15"
    names = [one] + ([] if a.no_cluster else [clustered]) + [dbos]
    rates: dict[str, dict[int, list[float]]] = {name: {n: [] for n in procs} for name in names}
    dbos_failed = ""
    server = RedisServer(tmpdir("albench-workers-"), appendfsync="always").start()
    cluster = None if a.no_cluster else Cluster(tmpdir("albench-cluster-")).start(
        appendfsync="always")
    try:
        sizes = bytes_per_call(server)
        print("bytes per recorded call: " + ", ".join(f"{k} {v:.0f}" for k, v in sizes.items()))
        # The machine is shared and its load moves from minute to minute: each round measures
        # every setup back to back, so a ratio compares neighbours in time, not two hours.
        for r in range(a.rounds):
            for n in procs:
                rates[one][n].append(agentledger_rate(server.url, n, a.runs, a.steps))
                if cluster is not None:
                    rates[clustered][n].append(agentledger_rate(cluster.url, n, a.runs, a.steps))
                got = dbos_failed or dbos_once(n, a.runs, a.steps)
                if isinstance(got, str):
                    dbos_failed = got
                else:
                    rates[dbos][n].append(got)
                print(f"round {r + 1}, {n} process(es): " + ", ".join(
                    f"{name.split(',')[0] if name == dbos else name} {v[n][-1]:,.0f}"
                    for name, v in rates.items() if v[n]), flush=True)
    finally:
        server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.base, ignore_errors=True)

    print(f"\n{a.runs} runs x {a.steps} recorded calls, {CONCURRENCY} runs at once per process; "
          f"recorded calls per second, median of {a.rounds} rounds (min-max)")
    print("| setup | " + " | ".join(f"{n} process{'es' if n > 1 else ''}" for n in procs) + " |")
    print("|---|" + "---:|" * len(procs))
    for name, r in rates.items():
        if name == dbos and dbos_failed:
            print(f"| {name} | {dbos_failed} |" + " |" * (len(procs) - 1))
            continue
        print(f"| {name} | " + " | ".join(
            f"{statistics.median(r[n]):,.0f} ({min(r[n]):,.0f}-{max(r[n]):,.0f})"
            for n in procs) + " |")
    if REDIS_CPU:
        print("\nrecorded calls per second of Redis CPU (one Redis; its INFO cpu, submits and "
              "queue traffic included, last round): "
              + ", ".join(f"{n} process{'es' if n > 1 else ''}: {v:,.0f}"
                          for n, v in REDIS_CPU.items()))
    if not dbos_failed:
        # Each round's ratio is of two measurements taken one after the other.
        print("\nratio agentledger (one Redis) / DBOS, per round; median (min-max):")
        for n in procs:
            ratios = [x / y for x, y in zip(rates[one][n], rates[dbos][n], strict=True)]
            print(f"  {n} process{'es' if n > 1 else ''}: {statistics.median(ratios):.1f}x "
                  f"({min(ratios):.1f}-{max(ratios):.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
