"""Where a call happens inside a graph run, in words that are the same on every replay.

A LangGraph task id hashes the parent checkpoint id, which is new on every run when the
checkpoint was not saved before the task began (always so with ``durability="exit"``). The scope
of a task is therefore built only from what a replay computes again: the step number, the node
name and the task path (``Send`` index, the functional API's call index), below the scope of the
task that invoked the (sub)graph. Inside a task, calls are numbered in order; a tool call that
carries the model's ``tool_call_id`` is keyed by it, so parallel tool calls need no order.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from agentledger import RunSession, StepStatus, _context
from langgraph.runtime import get_runtime

__all__ = ["TaskScope", "active", "current_task", "graph_scope", "recording_sessions"]

# Sessions opened by the graph lifecycle (a run of a graph on a durable checkpointer). Calls
# are recorded only into these: a graph on any other checkpointer is left untouched.
recording_sessions: set[int] = set()
_sessions_lock = threading.Lock()

# The scope of the task that is running (set by the task wrapper; LangGraph copies context
# into its executor threads and asyncio tasks).
current_task: ContextVar[TaskScope | None] = ContextVar("agentledger_lg_task", default=None)
# The scope a graph invocation runs under: "" for the root graph, the invoking task's scope
# for a subgraph.
graph_scope: ContextVar[str] = ContextVar("agentledger_lg_graph_scope", default="")


def _flat(part: Any) -> str:
    if isinstance(part, tuple):
        return ".".join(_flat(p) for p in part if not isinstance(p, bool))
    text = str(part)
    return text.removeprefix("__pregel_")


def task_segment(name: str, step: Any, path: tuple[Any, ...]) -> str:
    """``node.step`` for a pulled node, ``node.step.send<i>`` for a Send, ``node.step.call[...]``
    for a functional task (its path names the calling task and the call's index)."""
    base = f"{name}.{step}"
    if not path or path[0] == "__pregel_pull":
        return base
    if len(path) >= 3 and isinstance(path[1], tuple):
        return f"{base}.call[{_flat(path[1])}:{path[2]}]"
    if len(path) >= 2 and isinstance(path[1], int):
        return f"{base}.send{path[1]}"
    return f"{base}.{_flat(path[1:])}"


@dataclass
class TaskScope:
    """One task's scope and its call counters (reset on each retry attempt of the node)."""

    scope: str
    attempt: int = 1
    counters: dict[str, int] = field(default_factory=dict)
    interrupt_index: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_id(self, session: RunSession, kind: str, name: str, attempt: int,
                call_id: str | None = None) -> str:
        """The call id of the next call of ``kind:name`` in this task: the framework's id if
        there is one, else its occurrence number. On a retry attempt of the node, a call whose
        earlier attempt is recorded as failed gets a fresh id, so the retry runs it again while
        the calls that succeeded replay."""
        with self.lock:
            if attempt != self.attempt:
                self.attempt = attempt
                self.counters.clear()
            if call_id is None:
                n = self.counters.get(f"{kind}:{name}", 0) + 1
                self.counters[f"{kind}:{name}"] = n
                call_id = str(n)
        if attempt > 1:
            for a in range(1, attempt):
                cid = call_id if a == 1 else f"{call_id}.r{a}"
                meta = session.recorded(self.key(kind, name, cid))
                if meta is None or meta.status != StepStatus.FAILED:
                    return cid
            return f"{call_id}.r{attempt}"
        return call_id

    def key(self, kind: str, name: str, call_id: str) -> str:
        # The core's key format (docs/architecture.md): scope/kind:name@call_id.
        base = f"{self.scope}/{kind}:{name}" if self.scope else f"{kind}:{name}"
        return f"{base}@{call_id}"


def mark(session: RunSession) -> None:
    with _sessions_lock:
        recording_sessions.add(id(session))


def unmark(session: RunSession) -> None:
    with _sessions_lock:
        recording_sessions.discard(id(session))


def active() -> tuple[RunSession, TaskScope] | None:
    """The recording session and the task scope for a call made here, or None when the call
    must pass through untouched (no durable graph run, or inside another recorded call)."""
    session = _context._session.get()
    if session is None or id(session) not in recording_sessions:
        return None
    if _context._step.get() is not None:
        return None  # inside a recorded call (a tool calling a model): part of that call
    task = current_task.get()
    if task is None:
        return None
    return session, task


def node_attempt() -> int:
    """The retry attempt of the running node (1 on the first run)."""
    try:
        info = get_runtime().execution_info
    except RuntimeError:  # called outside a runnable
        return 1
    return int(getattr(info, "node_attempt", 1) or 1)
