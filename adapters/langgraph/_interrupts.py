"""``interrupt()`` as a durable approval.

When a node of a durable run calls ``interrupt(value)`` and nothing resumes it, the interrupt is
recorded as an approval step whose request is ``value``: it shows in
``ledger.pending_approvals()`` (CLI ``agentledger approvals``) and the run is marked waiting.
``ledger.decide(...)`` (CLI ``agentledger approve``) records the decision; the next invocation of
the thread (``graph.invoke(None, config)``) re-runs the node, its earlier calls replay from
their records, and ``interrupt()`` returns the decision as if ``Command(resume=...)`` had been
given. The resume value is the decision's ``payload`` when one was given (an edited value),
otherwise ``{"approved": bool, "note": str | None, "by": str | None}``. A ``Command(resume=v)``
given directly still works and settles the recorded approval with ``v`` as its payload.
"""

from __future__ import annotations

import contextlib
import json
import logging
from contextvars import ContextVar
from typing import Any

from agentledger import (
    ApprovalPending,
    Decision,
    LedgerError,
    RunSession,
    StepCall,
    StepKind,
    StepStatus,
    UnsupportedTypeError,
)

from ._lg_scope import TaskScope
from ._seams import scratchpad, with_scratchpad

__all__ = ["hook_scratchpad", "record_interrupts", "resume_value", "waiting_sessions"]

log = logging.getLogger("agentledger.langgraph")

_NAME = "interrupt"
# Sessions in which an interrupt was recorded during this invocation: they finish 'waiting'.
waiting_sessions: set[int] = set()
# The task whose interrupt() is asking for a resume value right now (its scratchpad's
# interrupt counter was just taken). A subgraph's interrupt falls through to its parent's
# scratchpad; this tells the parent's hook that the question is not its own.
_asking: ContextVar[TaskScope | None] = ContextVar("agentledger_lg_asking", default=None)


def resume_value(decision: Decision) -> Any:
    """What ``interrupt()`` returns for a recorded decision."""
    if decision.payload is not None:
        return decision.payload
    return {"approved": decision.approved, "note": decision.note, "by": decision.by}


def _call(task: TaskScope, index: int, payload: Any) -> StepCall:
    return StepCall(kind=StepKind.APPROVAL, name=_NAME, inputs=payload, scope=task.scope,
                    call_id=str(index))


def _decided(session: RunSession, task: TaskScope, index: int) -> Decision | None:
    key = task.key(str(StepKind.APPROVAL), _NAME, str(index))
    meta = session.recorded(key)
    if meta is None or meta.status != StepStatus.COMPLETED:
        return None
    for rec in session.ledger.steps(session.run_id, scope=task.scope):
        if rec.key == key and rec.outcome:
            value = session.codec.decode(json.loads(rec.outcome)["value"])
            return value if isinstance(value, Decision) else Decision.model_validate(value)
    return None


def hook_scratchpad(config: dict[str, Any], session: RunSession, task: TaskScope) -> None:
    """Let ``interrupt()`` in this task find a recorded decision as its resume value."""
    pad = scratchpad(config)
    if pad is None:
        return
    counter, null_resume = pad.interrupt_counter, pad.get_null_resume

    def interrupt_counter() -> int:
        index = counter()
        task.interrupt_index = len(pad.resume)
        _asking.set(task)
        return int(index)

    def get_null_resume(consume: bool = False) -> Any:
        value = null_resume(consume)
        if _asking.get() is not task or task.interrupt_index is None:
            return value
        index = task.interrupt_index
        if value is not None:
            _settle(session, task, index, value)
            return value
        decision = _decided(session, task, index)
        return None if decision is None else resume_value(decision)

    with_scratchpad(config, pad, interrupt_counter=interrupt_counter,
                    get_null_resume=get_null_resume)


def _settle(session: RunSession, task: TaskScope, index: int, value: Any) -> None:
    """A Command(resume=...) answered a recorded approval: record it as the decision."""
    key = task.key(str(StepKind.APPROVAL), _NAME, str(index))
    meta = session.recorded(key)
    if meta is None or meta.status != StepStatus.WAITING:
        return
    try:
        session.ledger.decide(session.run_id, key, approved=True, by="Command(resume)",
                              payload=value)
    except (LedgerError, UnsupportedTypeError) as e:
        log.warning("agentledger: could not settle approval %r: %s", key, e)


def record_interrupts(session: RunSession, task: TaskScope, exc: BaseException) -> None:
    """Record the interrupt raised by this task (not one bubbling up from a subgraph) as a
    waiting approval step."""
    if getattr(exc, "_agentledger_recorded", False):
        return
    exc._agentledger_recorded = True  # type: ignore[attr-defined]
    interrupts = exc.args[0] if exc.args and isinstance(exc.args[0], tuple | list) else ()
    if not interrupts or task.interrupt_index is None:
        return  # a static breakpoint (interrupt_before/after): nobody is asked anything
    payload = getattr(interrupts[0], "value", None)
    call = _call(task, task.interrupt_index, payload)
    try:
        session.begin(call)
    except ApprovalPending:
        pass  # already recorded by an earlier invocation
    except UnsupportedTypeError:
        with contextlib.suppress(ApprovalPending):
            session.begin(_call(task, task.interrupt_index, repr(payload)))
    waiting_sessions.add(id(session))
