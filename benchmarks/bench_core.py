"""Core: a durable step against a raw redis-py round trip, measured in the same run.

    python benchmarks/bench_core.py

- live tool step (intent + outcome: two round trips by design) / raw SET
- live LLM-style step (outcome only: one round trip) / raw SET
- replayed step (answered from the run's records, loaded with the lease in one round trip)
  / live tool step
- bytes Redis holds per step for a 1 KB result
"""

from __future__ import annotations

import asyncio
import sys

import redis
import redis.asyncio as aredis

from _common import bench_prefix, bench_redis, drop_prefix, interleaved_ratios, machine
from agentledger import Ledger, RunStatus, StepCall

PAYLOAD = "x" * 1024
ROUNDS, N = 41, 100


def main() -> int:
    with bench_redis() as url:
        prefix = bench_prefix()
        try:
            return report(url, prefix)
        finally:
            drop_prefix(url, prefix)


def report(url: str, prefix: str) -> int:
    raw = redis.Redis.from_url(url)
    ledger = Ledger.from_url(url, prefix=prefix)
    counter = {"run": 0}

    def raw_set(n: int) -> float:
        import time

        t0 = time.perf_counter()
        for i in range(n):
            raw.set(f"{prefix}:raw:{i}", PAYLOAD)
        return (time.perf_counter() - t0) / n * 1e6

    def steps(n: int, *, intent: bool, replay: bool) -> float:
        import time

        counter["run"] += 1
        run_id = f"r{counter['run']}"
        kind = "tool" if intent else "llm"
        if replay:
            with ledger.run(run_id) as s:
                for i in range(n):
                    s.call(StepCall(kind=kind, name="f", inputs={"i": i}, intent=intent), lambda: PAYLOAD)
        s = ledger.open_run(run_id)
        t0 = time.perf_counter()
        for i in range(n):
            s.call(StepCall(kind=kind, name="f", inputs={"i": i}, intent=intent), lambda: PAYLOAD)
        dt = (time.perf_counter() - t0) / n * 1e6
        s.finish(RunStatus.COMPLETED)
        ledger.delete_run(run_id)
        return dt

    res, ratio = interleaved_ratios({
        "raw SET": raw_set,
        "live tool step": lambda n: steps(n, intent=True, replay=False),
        "live LLM step": lambda n: steps(n, intent=False, replay=False),
        "replayed step": lambda n: steps(n, intent=True, replay=True),
    }, "raw SET", ROUNDS, N)

    ares = asyncio.run(async_report(url, prefix, ledger))

    # Storage: N completed tool steps with a 1 KB result each.
    with ledger.run("storage") as s:
        for i in range(1000):
            s.call(StepCall(kind="tool", name="send_email", inputs={"to": f"user{i}@example.com"}),
                   lambda: PAYLOAD)
    steps_key = ledger.keys("storage").steps
    mem = int(raw.memory_usage(steps_key, samples=0) or 0)
    fields = raw.hgetall(steps_key)
    logical = sum(len(k) + len(v) for k, v in fields.items())
    ledger.close()

    set_us = res["raw SET"]
    lines = [
        "## Core",
        "",
        f"`python benchmarks/bench_core.py` — {machine()}. {ROUNDS} rounds of {N} operations, "
        "the cases taking turns in each round; per-op times are medians, ratios the median of "
        "each round's ratio to that round's baseline. 1 KB results.",
        "",
        "| measure | per op | ratio | target |",
        "|---|---|---|---|",
        f"| raw redis-py `SET` (sync, baseline) | {set_us:.1f} µs | 1.00 | |",
        f"| live tool step: intent + outcome | {res['live tool step']:.1f} µs | "
        f"{ratio['live tool step']:.2f} × SET | ≤ 2.5 |",
        f"| live LLM step: outcome only | {res['live LLM step']:.1f} µs | "
        f"{ratio['live LLM step']:.2f} × SET | |",
        f"| replayed step (records loaded with the lease) | {res['replayed step']:.1f} µs | "
        f"{ratio['replayed step'] / ratio['live tool step']:.3f} × live step | ≤ 0.2 |",
        f"| raw `SET` (asyncio, baseline) | {ares['raw SET']:.1f} µs | 1.00 | |",
        f"| live tool step (asyncio) | {ares['live tool step']:.1f} µs | "
        f"{ares['live tool step'] / ares['raw SET']:.2f} × async SET | ≤ 2.5 |",
        "",
        f"Storage: {mem / 1000:.0f} bytes of Redis memory per tool step with a 1 KB result "
        f"(`MEMORY USAGE` of the steps hash over 1,000 steps; {logical / 1000:.0f} bytes of "
        "field names and values: metadata ≈ "
        f"{logical / 1000 - 1024 - 30:.0f} bytes, outcome envelope ≈ 30 bytes).",
    ]
    print("\n".join(lines))
    return 0


async def async_report(url: str, prefix: str, ledger: Ledger) -> dict[str, float]:
    import time

    raw = aredis.Redis.from_url(url)
    samples: dict[str, list[float]] = {"raw SET": [], "live tool step": []}
    for r in range(ROUNDS):
        t0 = time.perf_counter()
        for i in range(N):
            await raw.set(f"{prefix}:araw:{i}", PAYLOAD)
        samples["raw SET"].append((time.perf_counter() - t0) / N * 1e6)
        s = await ledger.aopen_run(f"a{r}")
        t0 = time.perf_counter()
        for i in range(N):
            await s.acall(StepCall(kind="tool", name="f", inputs={"i": i}), _payload)
        samples["live tool step"].append((time.perf_counter() - t0) / N * 1e6)
        await s.afinish(RunStatus.COMPLETED)
    await raw.aclose()
    await ledger.aclose()
    import statistics

    return {k: statistics.median(v) for k, v in samples.items()}


async def _payload() -> str:
    return PAYLOAD


if __name__ == "__main__":
    sys.exit(main())
