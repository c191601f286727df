"""Issue 14: after a crash at any instant, a thread that has not reached END never looks done.

The child (children/lg_resume_window.py) runs the issue's graph (research: a model call, two
direct tool calls and an @agentledger.step; writer: parallel tool calls through ToolNode,
looping; notify: one tool), SIGKILLs it at the k-th hit of a crash point for every k (the
checkpointer's put/put_writes boundaries and the step boundaries of the research node), and
restarts it as an app does: ``thread_progress`` decides whether to send the input, resume with
``invoke(None)`` or leave the thread alone.

LangGraph's own ``StateSnapshot.next`` is empty in the window between a step's last
``put_writes`` and the next ``put`` with any saver; ``test_sqlite_saver_shows_the_window``
shows it with LangGraph's SqliteSaver.
"""

from __future__ import annotations

import asyncio
import json
import operator
import threading
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from _support import killed, run_child, tmpdir
from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer

CHILD = Path(__file__).parent / "children" / "lg_resume_window.py"
EFFECTS = ["charge|4200", "lookup|price", "lookup|stock", "notify|ops", "reserve|budget",
           "send_email|ann", "send_email|bob"]
# Every put and put_writes of the run (exit mode saves no writes on the way), and the record of
# the research node's third side effect, its 4th recorded call (plan, lookup, lookup, step).
SAVER_POINTS = {"sync": "before_writes,after_writes,before_checkpoint,after_checkpoint",
                "exit": "before_checkpoint,after_checkpoint"}
STEP_POINTS = "before_record:4,after_record:4"
# Killed that many microseconds after that side effect (as the reporter did): anywhere
# from the step's record to the writer's first calls.
DELAYS = ",".join(str(d) for d in range(0, 12000, 750))


def _rows(proc: Any) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _by_effect(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        name, arg, ik = line.split("|")
        out[f"{name}|{arg}"].append(ik)
    return out


def _check(base: dict[str, Any], row: dict[str, Any], durability: str) -> None:
    name, seen = row["case"], row["seen"]
    assert row["second"] == 0 and seen is not None, f"{name}: the restart failed"
    final = base["seen"]["final"]
    if row["first"] == -9 and seen["values"] != final:
        # Killed before END: never "done", and the run record says the run is unfinished.
        assert seen["progress"] != "done", f"{name}: looked done at {seen}"
        assert seen["run"] == "running" and seen["stalled"], f"{name}: run {seen['run']}"
    assert seen["final"] == final, f"{name}: the resumed thread ended elsewhere: {seen}"
    assert seen["final_tasks"] == [] and seen["final_run"] == "completed", name
    assert all(s[1] == "completed" for s in seen["steps"]), name
    assert sorted(s[0] for s in seen["steps"]) == sorted(s[0] for s in base["seen"]["steps"])
    effects = _by_effect(row["effects"])
    assert sorted(effects) == EFFECTS, f"{name}: {sorted(effects)}"
    for effect, keys in effects.items():
        # Twice only when killed inside it, with the same idempotency key.
        assert len(keys) == 1 or (len(keys) == 2 and keys[0] == keys[1]), f"{name}: {effect}"
    # Killed inside a step: that step, or the parallel email in flight beside it, at every
    # level (at "async"/"exit" a killed process loses no record it sent: docs/durability.md).
    twice = {e for e, keys in effects.items() if len(keys) > 1}
    point = row["crash"][0] if "crash" in row else "delay"
    siblings = {"send_email|ann", "send_email|bob"}
    # At LangGraph's "async" a checkpoint is saved while the next superstep's tasks run: a kill
    # inside the saver can land while a tool body is in flight, which then runs once more.
    in_saver = durability == "async" and point in (
        "before_checkpoint", "after_checkpoint", "before_writes", "after_writes")
    assert not twice or point in ("before_record", "delay") or in_saver or (
        point == "after_record" and twice <= siblings), f"{name}: {twice} ran twice"


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
@pytest.mark.parametrize("nodes", ["sync", "async"])
def test_never_done_before_end(redis_url: str, prefix: str, nodes: str, durability: str
                               ) -> None:
    points = f"{SAVER_POINTS['exit' if durability == 'exit' else 'sync']},{STEP_POINTS}"
    delays = DELAYS if (nodes, durability) == ("async", "sync") else ""
    proc = run_child(CHILD, redis_url, prefix, str(tmpdir("lg-window-")), "durable", nodes,
                     durability, points, delays, timeout=600)
    rows = _rows(proc)
    base, cases = rows[0], rows[1:]
    assert base["first"] == 0 and sorted(_by_effect(base["effects"])) == EFFECTS, base
    killed_cases = [r for r in cases if r["first"] == -9]
    # Every point was hit at least once (the loop stops at the first k it no longer reaches).
    hit = {r["crash"][0] for r in killed_cases if "crash" in r}
    assert hit == {p.partition(":")[0] for p in points.split(",")}, hit
    for row in cases:
        _check(base, row, durability)
    assert base["seen"]["progress"] == "done", base["seen"]
    assert not killed(proc)


@pytest.mark.slow
def test_sqlite_saver_shows_the_window(redis_url: str, prefix: str) -> None:
    """LangGraph itself: SqliteSaver, killed after a task's put_writes and before the next
    put, leaves tasks whose results are saved and an empty ``next`` though END is far."""
    proc = run_child(CHILD, redis_url, prefix, str(tmpdir("lg-window-")), "sqlite", "sync",
                     "sync", "after_writes", "", timeout=300)
    rows = _rows(proc)
    base, cases = rows[0], rows[1:]
    final = base["seen"]["final"]
    window = [r for r in cases if r["first"] == -9 and r["seen"]["values"] != final
              and r["seen"]["has_checkpoint"] and not r["seen"]["next"]]
    research = [r for r in window if r["seen"]["tasks"] == ["research"]]
    assert research, [r["seen"] for r in cases]
    for row in window:
        assert row["seen"]["tasks"] and row["seen"]["progress"] == "resume", row
    for row in cases:
        # thread_progress needs no ledger: the thread resumes to the same end.
        assert row["seen"]["final"] == final, row


# ---- the statuses, in one process ------------------------------------------------------------
class _Gate(TypedDict):
    log: Annotated[list[str], operator.add]


def _gated_graph(saver: Any, gate: threading.Event, started: threading.Event) -> Any:
    def hold(state: _Gate) -> dict[str, Any]:
        started.set()
        assert gate.wait(30)
        return {"log": ["held"]}

    def ask(state: _Gate) -> dict[str, Any]:
        return {"log": [str(interrupt("go on?"))]}

    b = StateGraph(_Gate)
    b.add_node("hold", hold)
    b.add_node("ask", ask)
    b.add_edge(START, "hold")
    b.add_edge("hold", "ask")
    b.add_edge("ask", END)
    return b.compile(checkpointer=saver)


def test_thread_progress_statuses(ledger: Ledger) -> None:
    from agentledger.langgraph import ThreadStatus, athread_progress, thread_progress

    gate, started = threading.Event(), threading.Event()
    graph = _gated_graph(DurableCheckpointer(ledger), gate, started)
    config = {"configurable": {"thread_id": "gated-1"}}
    progress = thread_progress(graph, config)
    assert (progress.status, progress.tasks, progress.run) == (ThreadStatus.NEW, (), None)

    worker = threading.Thread(target=graph.invoke, args=({"log": []}, config))
    worker.start()
    assert started.wait(30)
    progress = thread_progress(graph, config)  # a live process holds the run
    assert progress.status == "running" and progress.run is not None
    assert progress.run.status == "running" and not progress.done
    gate.set()
    worker.join(30)

    progress = thread_progress(graph, config)
    assert progress.status == "waiting" and progress.tasks == ("ask",)
    assert progress.run is not None and progress.run.status == "waiting"
    graph.invoke(Command(resume="yes"), config)
    progress = thread_progress(graph, {"configurable": {"thread_id": "gated-1",
                                                       "checkpoint_id": "ignored"}})
    assert progress.done and progress.tasks == () and progress.run is not None
    assert progress.run.status == "completed"
    assert asyncio.run(athread_progress(graph, config)).done
    with pytest.raises(ValueError, match="thread_id"):
        thread_progress(graph, {"configurable": {}})
