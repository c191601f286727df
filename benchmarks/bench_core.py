"""Core: a durable step against a raw redis-py round trip, measured in the same run.

    python benchmarks/bench_core.py

- live tool step (intent + outcome: two round trips by design) / raw SET
- live LLM-style step (outcome only: one round trip) / raw SET
- the same two at durability "async" (records sent, acknowledged once at the end of the
  timed calls: that barrier is inside the time) / raw SET
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
    fast = Ledger.from_url(url, prefix=prefix, durability="async")
    at_exit = Ledger.from_url(url, prefix=prefix, durability="exit")
    by_level = {"sync": ledger, "async": fast, "exit": at_exit}
    counter = {"run": 0}

    def raw_set(n: int) -> float:
        import time

        t0 = time.perf_counter()
        for i in range(n):
            raw.set(f"{prefix}:raw:{i}", PAYLOAD)
        return (time.perf_counter() - t0) / n * 1e6

    def steps(n: int, *, intent: bool, replay: bool, level: str = "sync") -> float:
        import time

        counter["run"] += 1
        run_id = f"r{counter['run']}"
        kind = "tool" if intent else "llm"
        led = by_level[level]
        if replay:
            with led.run(run_id) as s:
                for i in range(n):
                    s.call(StepCall(kind=kind, name="f", inputs={"i": i}, intent=intent), lambda: PAYLOAD)
        s = led.open_run(run_id)
        t0 = time.perf_counter()
        for i in range(n):
            s.call(StepCall(kind=kind, name="f", inputs={"i": i}, intent=intent), lambda: PAYLOAD)
        s.barrier()
        dt = (time.perf_counter() - t0) / n * 1e6
        s.finish(RunStatus.COMPLETED)
        ledger.delete_run(run_id)
        return dt

    def turns(n: int, level: str) -> float:
        """An agent's loop: a model call, then the tool call it asked for; per recorded call
        (at "async" the tool's claim waits for the model's answer, docs/durability.md)."""
        import time

        counter["run"] += 1
        run_id = f"r{counter['run']}"
        s = by_level[level].open_run(run_id)
        t0 = time.perf_counter()
        for i in range(n // 2):
            s.call(StepCall(kind="llm", name="m", inputs={"i": i}, intent=False), lambda: PAYLOAD)
            s.call(StepCall(kind="tool", name="t", inputs={"i": i}), lambda: PAYLOAD)
        s.barrier()
        dt = (time.perf_counter() - t0) / (n // 2 * 2) * 1e6
        s.finish(RunStatus.COMPLETED)
        ledger.delete_run(run_id)
        return dt

    res, ratio = interleaved_ratios({
        "raw SET": raw_set,
        "live tool step": lambda n: steps(n, intent=True, replay=False),
        "live LLM step": lambda n: steps(n, intent=False, replay=False),
        "replayed step": lambda n: steps(n, intent=True, replay=True),
        "async tool step": lambda n: steps(n, intent=True, replay=False, level="async"),
        "async LLM step": lambda n: steps(n, intent=False, replay=False, level="async"),
        "exit tool step": lambda n: steps(n, intent=True, replay=False, level="exit"),
        "exit LLM step": lambda n: steps(n, intent=False, replay=False, level="exit"),
        **{f"{level} turn": (lambda n, level=level: turns(n, level)) for level in by_level},
    }, "raw SET", ROUNDS, N)
    fast.close()
    at_exit.close()

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
        f"| durability async: live tool step | {res['async tool step']:.1f} µs | "
        f"{ratio['async tool step']:.2f} × SET | |",
        f"| durability async: live LLM step | {res['async LLM step']:.1f} µs | "
        f"{ratio['async LLM step']:.2f} × SET | ≤ 1 |",
        f"| durability exit: live tool step | {res['exit tool step']:.1f} µs | "
        f"{ratio['exit tool step']:.2f} × SET | |",
        f"| durability exit: live LLM step | {res['exit LLM step']:.1f} µs | "
        f"{ratio['exit LLM step']:.2f} × SET | ≤ 1 |",
        *(f"| durability {level}: agent loop (LLM step, then tool step), per recorded call | "
          f"{res[f'{level} turn']:.1f} µs | {ratio[f'{level} turn']:.2f} × SET | |"
          for level in by_level),
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
    print("\n".join(lines + otel_report(url, prefix)))
    return 0


def otel_report(url: str, prefix: str) -> list[str]:
    """agentledger.otel off (the default) against on, in the same rounds: a tool step live
    and replayed. On: the SDK's tracer provider with a batch processor (spans dropped at
    export) and a meter provider with a reader."""
    import os
    import timeit

    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        return ["", "OpenTelemetry rows skipped: opentelemetry-sdk is not installed."]
    import agentledger.otel
    from agentledger import _otel

    os.environ.pop("OTEL_SDK_DISABLED", None)  # nox's offline setting would make it a no-op

    class Dropped(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(Dropped()))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    agentledger.otel.instrument(tracer_provider=tp, meter_provider=mp)
    hooks = _otel.active
    agentledger.otel.uninstrument()
    ledger = Ledger.from_url(url, prefix=prefix)
    counter = {"run": 0}

    def steps(n: int, *, on: bool, replay: bool) -> float:
        import time

        counter["run"] += 1
        run_id = f"otel{counter['run']}"
        _otel.active = hooks if on else None
        try:
            if replay:
                with ledger.run(run_id) as s:
                    for i in range(n):
                        s.call(StepCall(kind="tool", name="f", inputs={"i": i}), lambda: PAYLOAD)
            s = ledger.open_run(run_id)
            t0 = time.perf_counter()
            for i in range(n):
                s.call(StepCall(kind="tool", name="f", inputs={"i": i}), lambda: PAYLOAD)
            dt = (time.perf_counter() - t0) / n * 1e6
            s.finish(RunStatus.COMPLETED)
        finally:
            _otel.active = None
        ledger.delete_run(run_id)
        return dt

    res, ratio = interleaved_ratios({
        "live, off": lambda n: steps(n, on=False, replay=False),
        "live, on": lambda n: steps(n, on=True, replay=False),
        "replayed, off": lambda n: steps(n, on=False, replay=True),
        "replayed, on": lambda n: steps(n, on=True, replay=True),
    }, "live, off", ROUNDS, N)
    tp.shutdown()
    mp.shutdown()
    ledger.close()
    # Off, a live step pays two lookups of the module global (begin, record) and three tests
    # of a local or a slot (record, call); a replayed step one lookup.
    check_ns = min(timeit.repeat("_otel.active is not None", globals={"_otel": _otel},
                                 number=1_000_000, repeat=5)) * 1000
    return [
        "",
        "OpenTelemetry (`agentledger.otel`), a tool step, off (the default) against on, "
        "in the same rounds:",
        "",
        "| measure | off | on | on / off |",
        "|---|---|---|---|",
        f"| live tool step | {res['live, off']:.1f} µs | {res['live, on']:.1f} µs | "
        f"{ratio['live, on']:.2f} |",
        f"| replayed step | {res['replayed, off']:.1f} µs | {res['replayed, on']:.1f} µs | "
        f"{ratio['replayed, on'] / ratio['replayed, off']:.2f} |",
        "",
        f"Off, the hooks cost one check of a module global, {check_ns:.0f} ns each, two per "
        f"live step: {2 * check_ns / (res['live, off'] * 1000) * 100:.3f} % of a live step.",
    ]


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
