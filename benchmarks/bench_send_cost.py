"""What one write to Redis costs this process, in CPU, depending on what the two sides were
doing: the floor under any recorder that sends each record as it happens.

    python benchmarks/bench_send_cost.py      # AGENTLEDGER_URL, else redis://127.0.0.1:6379/0

One connection with replies off (``CLIENT REPLY OFF``: nothing is ever read), one ~800-byte SET
per write, its thread CPU measured around the ``sendall`` alone. Four conditions: writes back to
back (Redis is busy reading: nothing to wake); after 200 µs or 1 ms of this thread computing
(a running agent or graph between two records: Redis has gone idle); after the thread slept as
long. Every figure is a ratio against the back-to-back write measured in the same run.

A second table compares, on asyncio, redis-py's ``send_packed_command`` (with a socket timeout
it runs each write in a task of its own, ``asyncio.wait_for``) with the ledger's
``asend_packed``, for a write with replies off and for a write and its reply, as the ratio of
the two in the same run.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
import uuid

import redis

URL = os.environ.get("AGENTLEDGER_URL", "redis://127.0.0.1:6379/0")
WRITES = int(os.environ.get("BENCH_WRITES", "2000"))
ROUNDS = 3


def measure(conn: redis.connection.Connection, payload: bytes, gap_s: float, busy: bool
            ) -> tuple[float, float]:
    """Mean and median thread-CPU µs of one write after ``gap_s`` of computing (busy) or
    sleeping. The mean is what a run pays in total (the tail is long); the median, a typical
    write."""
    sock = conn._sock
    assert sock is not None
    costs = []
    for _ in range(WRITES):
        if gap_s:
            if busy:
                end = time.perf_counter() + gap_s
                while time.perf_counter() < end:
                    pass
            else:
                time.sleep(gap_s)
        t = time.thread_time_ns()
        sock.sendall(payload)
        costs.append(time.thread_time_ns() - t)
    return statistics.fmean(costs) / 1000, statistics.median(costs) / 1000


def main() -> None:
    client = redis.Redis.from_url(URL)
    key = f"bench-send:{uuid.uuid4().hex}"
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command("CLIENT", "REPLY", "OFF")
        payload = b"".join(conn.pack_command("SET", key, "x" * 800, "PX", 60_000))
        cases = [("back to back", 0.0, True), ("after 200 µs computing", 0.0002, True),
                 ("after 1 ms computing", 0.001, True), ("after 200 µs asleep", 0.0002, False),
                 ("after 1 ms asleep", 0.001, False)]
        got: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in cases}
        for _ in range(ROUNDS):  # interleaved, so that a noisy neighbour hits every case
            for name, gap, busy in cases:
                got[name].append(measure(conn, payload, gap, busy))
    finally:
        conn.disconnect()
        client.delete(key)
        client.close()
    base = statistics.median(mean for mean, _ in got["back to back"])
    print("## One write to Redis, in this process's CPU\n")
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; Redis at {URL}; {WRITES} writes of "
          f"{len(payload)} bytes per case and round, {ROUNDS} rounds interleaved; load "
          f"average {os.getloadavg()[0]:.1f} at the end.\n")
    print("| before the write | mean µs of CPU per write (rounds) | median µs (rounds) | "
          "mean × back to back |")
    print("|---|---|---|---|")
    for name, values in got.items():
        means = " / ".join(f"{m:.1f}" for m, _ in values)
        medians = " / ".join(f"{d:.1f}" for _, d in values)
        ratio = statistics.median(m for m, _ in values) / base
        print(f"| {name} | {means} | {medians} | {ratio:.1f} |")
    print("\nA write that has to wake an idle Redis is charged to the writer (on a VM: the "
          "wake-up of the other vCPU); a recorder that writes once per step of a running "
          "agent pays the computing rows, not the first.")


def _spin(s: float) -> None:
    end = time.perf_counter() + s
    while time.perf_counter() < end:
        pass


async def asyncio_costs(gap_s: float, chunks: int = 10, per_chunk: int = 100
                        ) -> dict[str, float]:
    """Least CPU µs per op over ``chunks`` chunks (after ``gap_s`` of computing each), minus
    the same loop without the op: redis-py's asyncio write and ours, quiet and with a reply."""
    import redis.asyncio as aredis

    from agentledger._nodes import asend_packed

    client = aredis.Redis.from_url(URL, socket_timeout=5)
    conn = await client.connection_pool.get_connection()
    key = f"bench-send:{uuid.uuid4().hex}"
    quiet = [b"".join(conn.pack_command("CLIENT", "REPLY", "SKIP")
                      + conn.pack_command("SET", key, "x" * 800, "PX", 60_000))]
    loud = [b"".join(conn.pack_command("SET", key, "x" * 800, "PX", 60_000))]

    async def nothing() -> None:
        pass

    async def theirs_quiet() -> None:
        await conn.send_packed_command(quiet, check_health=False)

    async def ours_quiet() -> None:
        await asend_packed(conn, quiet, check_health=False)

    async def theirs_loud() -> None:
        await conn.send_packed_command(loud, check_health=False)
        await conn.read_response()

    async def ours_loud() -> None:
        await asend_packed(conn, loud, check_health=False)
        await conn.read_response()

    ops = {"none": nothing, "redis-py, replies off": theirs_quiet,
           "ours, replies off": ours_quiet, "redis-py, with its reply": theirs_loud,
           "ours, with its reply": ours_loud}
    least = {name: float("inf") for name in ops}
    try:
        for _ in range(chunks):  # interleaved chunks: a noisy neighbour hits every op
            for name, op in ops.items():
                c = time.process_time()
                for _ in range(per_chunk):
                    _spin(gap_s)
                    await op()
                least[name] = min(least[name], (time.process_time() - c) / per_chunk)
    finally:
        await client.connection_pool.release(conn)
        await client.delete(key)
        await client.aclose()
    return {name: (v - least["none"]) * 1e6 for name, v in least.items() if name != "none"}


def report_asyncio() -> None:
    print("\n## One asyncio write: redis-py's `send_packed_command` and the ledger's "
          "`asend_packed`\n")
    print("CPU µs of this process per op (least of 10 chunks of 100, the loop's own cost "
          "taken out), after 0 and 300 µs of computing:\n")
    print("| op | redis-py, 0 µs | ours, 0 µs | ours × redis-py | redis-py, 300 µs | "
          "ours, 300 µs | ours × redis-py |")
    print("|---|---|---|---|---|---|---|")
    runs = [asyncio.run(asyncio_costs(gap)) for gap in (0.0, 0.0003)]
    for kind in ("replies off", "with its reply"):
        cells = []
        for got in runs:
            theirs, ours = got[f"redis-py, {kind}"], got[f"ours, {kind}"]
            cells += [f"{theirs:.1f}", f"{ours:.1f}", f"{ours / theirs:.2f}" if theirs > 0
                      else "-"]
        print(f"| a write, {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
    report_asyncio()
