"""Shared by the benchmarks: a Redis to measure on, the raw round-trip baseline, and output."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _support import SHARED_URL, RedisServer, answers, tmpdir  # noqa: E402


@contextmanager
def bench_redis() -> Iterator[str]:
    """The Redis at 127.0.0.1:6379 if it answers, else one of our own (no persistence)."""
    if answers(SHARED_URL):
        yield SHARED_URL
        return
    server = RedisServer(tmpdir(), appendonly=False).start()
    try:
        yield server.url
    finally:
        server.stop()


def bench_prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


def per_op_us(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def interleaved(cases: dict[str, Callable[[int], float]], rounds: int, n: int) -> dict[str, float]:
    """Median over rounds of each case's per-op time, the cases taking turns in every round
    so that a noisy neighbour slows them all alike."""
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            samples[name].append(case(n))
    return {k: statistics.median(v) for k, v in samples.items()}


def interleaved_ratios(cases: dict[str, Callable[[int], float]], baseline: str, rounds: int,
                       n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per-op medians, and the median over rounds of each case's ratio to the baseline measured
    in the same round: a burst of load from a neighbour hits both sides of a ratio."""
    samples: dict[str, list[float]] = {k: [] for k in cases}
    ratios: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        now = {name: case(n) for name, case in cases.items()}
        for name, t in now.items():
            samples[name].append(t)
            ratios[name].append(t / now[baseline])
    return ({k: statistics.median(v) for k, v in samples.items()},
            {k: statistics.median(v) for k, v in ratios.items()})


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split(" v=")
    version = server[1].split()[0] if len(server) > 1 else "?"
    return (f"{platform.machine()}, {cpu}, Python {platform.python_version()}, redis-py "
            f"{redis.__version__}, Redis {version}, {time.strftime('%Y-%m-%d')}")
