"""Resume-window child (issue 14): kill the graph at every checkpointer and step boundary,
restart it as an app would, report what the restarted process saw and did.

    python lg_resume_window.py REDIS_URL PREFIX OUTDIR SAVER NODES DURABILITY [POINTS] [DELAYS]

SAVER is ``durable`` (DurableCheckpointer) or ``sqlite`` (LangGraph's SqliteSaver with the same
crash points, to show what LangGraph itself does with a correct saver); NODES ``sync`` or
``async``; DURABILITY ``sync``, ``async`` or ``exit``. POINTS (comma separated, default all)
are crash points; for each the k-th hit is killed, for k = 1, 2, ... until a run no longer
reaches it (``point:k``: the k-th hit only). DELAYS (comma separated microseconds) kill the process that long after the
research node's third side effect, the way the issue's reporter did.

Imports LangGraph once, then forks a process per crash and one per restart. Prints one JSON
line per case; the first is the uncrashed baseline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lg_resume_graph as g
from langgraph.checkpoint.sqlite import SqliteSaver

from agentledger import Ledger, _faults
from agentledger.langgraph import DurableCheckpointer

try:  # the documented "is this thread done?" (absent before issue 14 was fixed)
    from agentledger.langgraph import athread_progress, thread_progress
except ImportError:
    thread_progress = athread_progress = None

POINTS = ["before_writes", "after_writes", "before_checkpoint", "after_checkpoint",
          "before_claim", "after_claim", "before_record", "after_record"]


class CrashingSqliteSaver(SqliteSaver):
    """SqliteSaver with the crash points DurableCheckpointer has."""

    def put(self, *args: Any, **kwargs: Any) -> Any:
        _faults.crash_point("before_checkpoint")
        out = super().put(*args, **kwargs)
        _faults.crash_point("after_checkpoint")
        return out

    def put_writes(self, *args: Any, **kwargs: Any) -> None:
        _faults.crash_point("before_writes")
        super().put_writes(*args, **kwargs)
        _faults.crash_point("after_writes")


class Setup:
    def __init__(self, url: str, prefix: str, outdir: Path, saver: str, nodes: str,
                 durability: str) -> None:
        self.url, self.prefix, self.outdir = url, prefix, outdir
        self.saver, self.nodes, self.durability = saver, nodes, durability

    def open(self, name: str) -> tuple[Any, Any, Ledger | None]:
        if self.saver == "sqlite":
            conn = sqlite3.connect(str(self.outdir / f"{name}.db"), check_same_thread=False,
                                   isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            saver: Any = CrashingSqliteSaver(conn)
            return g.build(saver, use_async=False), saver, None
        ledger = Ledger.from_url(self.url, prefix=self.prefix, lease_ms=2000)
        saver = DurableCheckpointer(ledger)
        return g.build(saver, use_async=self.nodes == "async"), saver, ledger

    def invoke(self, graph: Any, payload: Any, config: dict[str, Any]) -> Any:
        if self.nodes == "async":
            return asyncio.run(graph.ainvoke(payload, config, durability=self.durability))
        return graph.invoke(payload, config, durability=self.durability)

    def get_state(self, graph: Any, config: dict[str, Any]) -> Any:
        if self.nodes == "async":
            return asyncio.run(graph.aget_state(config))
        return graph.get_state(config)

    def progress(self, graph: Any, config: dict[str, Any]) -> Any:
        if thread_progress is None:
            return None
        if self.nodes == "async":
            return asyncio.run(athread_progress(graph, config))
        return thread_progress(graph, config)


def start(setup: Setup, name: str) -> None:
    graph, _, ledger = setup.open(name)
    setup.invoke(graph, g.INPUTS, {"configurable": {"thread_id": name}})
    if ledger is not None:
        ledger.close()


def restart(setup: Setup, name: str) -> None:
    """What an app does after a crash: look at the thread, resume it unless it is done."""
    graph, _, ledger = setup.open(name)
    config = {"configurable": {"thread_id": name}}
    state = setup.get_state(graph, config)
    progress = setup.progress(graph, config)
    run = ledger.get_run(name) if ledger is not None else None
    seen = {
        "has_checkpoint": state.metadata is not None,
        "next": list(state.next),
        "tasks": [t.name for t in state.tasks],
        "values": g.plain_state(state.values),
        "progress": str(progress.status) if progress is not None else None,
        "run": str(run.status) if run is not None else None,
        "stalled": ledger.is_stalled(run) if ledger is not None and run is not None else None,
    }
    if progress is not None:  # the documented way
        action = {"new": "input", "resume": "none"}.get(str(progress.status), "nothing")
    elif state.next:  # the app: "if state.next: ainvoke(None)"
        action = "none"
    else:
        action = "nothing" if state.metadata is not None else "input"
    seen["action"] = action
    if action != "nothing":
        setup.invoke(graph, g.INPUTS if action == "input" else None, config)
    final = setup.get_state(graph, config)
    seen["final"] = g.plain_state(final.values)
    seen["final_tasks"] = [t.name for t in final.tasks]
    if ledger is not None:
        end = ledger.get_run(name)
        seen["final_run"] = str(end.status) if end is not None else None
        seen["steps"] = [[s.key, str(s.status), s.attempts] for s in ledger.steps(name)]
        ledger.close()
    Path(str(os.environ["LG_EFFECTS"]) + ".seen").write_text(json.dumps(seen))


def kill_after_reserve(delay_us: int) -> None:
    """SIGKILL this process delay_us after the research node's step ran its side effect."""
    original = g.effect

    def effect(name: str, arg: str) -> None:
        original(name, arg)
        if name == "reserve":
            deadline = time.perf_counter() + delay_us / 1e6

            def kill() -> None:
                while time.perf_counter() < deadline:
                    time.sleep(0)
                os.kill(os.getpid(), signal.SIGKILL)

            threading.Thread(target=kill, daemon=True).start()

    g.effect = effect


def forked(fn: Any, *args: Any, crash: tuple[str, int] | None = None,
           delay_us: int | None = None) -> int:
    """Run fn in a forked process; its wait status as a return code (-9: SIGKILL)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _faults._target = crash
            _faults._counts.clear()
            if delay_us is not None:
                kill_after_reserve(delay_us)
            fn(*args)
        except BaseException as e:
            print(f"child error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def case(setup: Setup, label: str, crash: tuple[str, int] | None = None,
         delay_us: int | None = None) -> dict[str, Any]:
    name = f"{setup.saver}-{setup.nodes}-{setup.durability}-{label}"
    effects = setup.outdir / f"{name}.effects"
    os.environ["LG_EFFECTS"] = str(effects)
    first = forked(start, setup, name, crash=crash, delay_us=delay_us)
    second = forked(restart, setup, name)
    seen_file = Path(str(effects) + ".seen")
    return {"case": name, "first": first, "second": second,
            "effects": effects.read_text().splitlines() if effects.exists() else [],
            "seen": json.loads(seen_file.read_text()) if seen_file.exists() else None}


def main() -> None:
    url, prefix, outdir, saver, nodes, durability = sys.argv[1:7]
    points = sys.argv[7].split(",") if len(sys.argv) > 7 and sys.argv[7] else POINTS
    delays = [int(d) for d in sys.argv[8].split(",")] if len(sys.argv) > 8 and sys.argv[8] else []
    setup = Setup(url, prefix, Path(outdir), saver, nodes, durability)
    # One run here first, so every forked process starts with warm caches.
    os.environ["LG_EFFECTS"] = str(Path(outdir) / "warm.effects")
    start(setup, f"{saver}-{nodes}-{durability}-warm")
    base = case(setup, "base")
    print(json.dumps(base), flush=True)
    for spec in points:
        point, _, only = spec.partition(":")
        k = int(only or 1)
        while True:
            row = case(setup, f"{point}-{k}", crash=(point, k))
            row["crash"] = [point, k]
            print(json.dumps(row), flush=True)
            if only or row["first"] != -signal.SIGKILL:
                break
            k += 1
    for d in delays:
        row = case(setup, f"delay{d}", delay_us=d)
        row["delay_us"] = d
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
