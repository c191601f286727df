"""Is a thread done? An answer that holds after a crash at any instant.

LangGraph's live ``StateSnapshot.next`` names the tasks of the thread's last saved checkpoint
that still have to run, and a task whose writes are saved is not one of them. LangGraph saves a
finished task's writes (``put_writes``) as soon as the task ends and the next checkpoint
(``put``) only after the whole step, as two separate saves, with every saver and in every
durability mode. A crash between the two leaves a checkpoint all of whose tasks have their
writes saved: ``next`` is empty though the graph has not reached END. ``thread_progress`` reads
the saved tasks (``StateSnapshot.tasks``, which include those) and the run record the ledger
keeps for the thread (``running`` until an invocation reaches its end).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentledger import Ledger, RunRecord, RunStatus

__all__ = ["ThreadProgress", "ThreadStatus", "athread_progress", "thread_progress"]


class ThreadStatus(StrEnum):
    """What a thread needs next."""

    NEW = "new"
    """Nothing of it is saved: invoke the graph with its input."""
    RUNNING = "running"
    """A live process holds the thread's run now: leave it alone (or wait)."""
    RESUME = "resume"
    """It stopped before END: ``invoke(None, config)`` continues it."""
    WAITING = "waiting"
    """An ``interrupt()`` waits for an answer (``ledger.decide`` or ``Command(resume=...)``)."""
    DONE = "done"
    """It reached END, and the invocation that got there ended."""


@dataclass(frozen=True, slots=True)
class ThreadProgress:
    """Where a thread stands, from its last checkpoint and its run record."""

    status: ThreadStatus
    """What the thread needs next."""
    tasks: tuple[str, ...]
    """The nodes of the last saved step, those whose results are saved but not yet applied
    included (``next`` leaves those out)."""
    run: RunRecord | None
    """The thread's run record (``None``: not a ``DurableCheckpointer`` thread, or no run)."""

    @property
    def done(self) -> bool:
        return self.status is ThreadStatus.DONE


def _latest(config: Any) -> dict[str, Any]:
    conf = (config or {}).get("configurable") or {}
    if conf.get("thread_id") is None:
        raise ValueError("thread_progress needs config['configurable']['thread_id']")
    # The thread's newest checkpoint, whatever checkpoint_id the config names.
    return {"configurable": {k: v for k, v in conf.items() if k != "checkpoint_id"}}


def _ledger(graph: Any) -> Ledger | None:
    ledger = getattr(getattr(graph, "checkpointer", None), "ledger", None)
    return ledger if isinstance(ledger, Ledger) else None


def _judge(state: Any, run: RunRecord | None, live_owner: bool) -> ThreadProgress:
    tasks = tuple(t.name for t in state.tasks)
    unfinished = run is not None and run.status == RunStatus.RUNNING
    if unfinished and live_owner:
        status = ThreadStatus.RUNNING
    elif state.metadata is None:
        status = ThreadStatus.NEW
    elif state.interrupts:
        status = ThreadStatus.WAITING
    elif tasks or unfinished:
        # No task left but a run still open: the process died after saving the final
        # checkpoint; invoke(None) runs nothing and closes the run.
        status = ThreadStatus.RESUME
    else:
        status = ThreadStatus.DONE
    return ThreadProgress(status, tasks, run)


def thread_progress(graph: Any, config: Any) -> ThreadProgress:
    """Where the thread of ``config`` stands: ``.done`` is true only once it reached END.

    Use it, not ``graph.get_state(config).next``, to decide whether to resume a thread after a
    crash. ``graph`` is a compiled graph; a thread of another checkpointer is judged from its
    checkpoint alone (``run`` is ``None``)."""
    config = _latest(config)
    state = graph.get_state(config)
    ledger = _ledger(graph)
    run = ledger.get_run(str(config["configurable"]["thread_id"])) if ledger else None
    live = ledger is not None and run is not None and not ledger.is_stalled(run)
    return _judge(state, run, live)


async def athread_progress(graph: Any, config: Any) -> ThreadProgress:
    """The async form of :func:`thread_progress`."""
    config = _latest(config)
    state = await graph.aget_state(config)
    ledger = _ledger(graph)
    run = await ledger.aget_run(str(config["configurable"]["thread_id"])) if ledger else None
    live = ledger is not None and run is not None and not ledger.is_stalled(run)
    return _judge(state, run, live)
