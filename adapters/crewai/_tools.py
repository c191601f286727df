"""Tool calls as durable steps, through CrewAI's ``before/after_tool_call`` hooks.

The before hook records the intent (or finds the recorded outcome); a recorded call is
blocked, and the after hook, which CrewAI runs on blocked calls too, hands back the recorded
result in its place. A live call runs, and the after hook records its result before the agent
sees it. Both hooks are registered in CrewAI's execution-scoped registry for the duration of
one kickoff, so other crews in the process never see them.

Every tool path goes through these hooks: ReAct and native function calling, sync and async
tools, delegation to coworkers and MCP tools.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

import agentledger
from agentledger import (
    InDoubtPolicy,
    LedgerError,
    RunSession,
    StepCall,
    StepKind,
    StepStart,
)
from crewai.hooks.dispatch import HookAborted
from crewai.hooks.tool_hooks import ToolCallHookContext

from ._abort import LedgerAbort

__all__ = ["ToolSteps"]


@dataclass(slots=True)
class _Pending:
    """What the before hook decided for one call, read back by the after hook."""

    result: Any = None  # a replayed or refusal result to hand back
    start: StepStart | None = None  # a live step to record
    session: RunSession | None = None
    abort: LedgerError | None = None
    tokens: list[Any] = field(default_factory=list)  # (contextvar, token) to reset


class ToolSteps:
    """The tool hooks of one handler."""

    def __init__(self, approve: frozenset[str],
                 in_doubt: Mapping[str, InDoubtPolicy | str]) -> None:
        self.approve = approve
        self.in_doubt = dict(in_doubt)
        self._pending: dict[int, _Pending] = {}
        self._seen: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._pending.clear()
            self._seen.clear()

    def _call_id(self, name: str, args: Any) -> str:
        # The hooks carry no tool call id, and native calls may run in parallel threads, so
        # the key is the arguments' digest plus its occurrence within the scope: the same on
        # every replay whatever order parallel calls start in.
        text = json.dumps(args, sort_keys=True, default=lambda o: f"<{type(o).__name__}>")
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        where = (agentledger.current_scope(), name, digest)
        with self._lock:
            n = self._seen.get(where, 0) + 1
            self._seen[where] = n
        return f"{digest}.{n}"

    # ---- hooks ----------------------------------------------------------------------------
    def before(self, ctx: ToolCallHookContext) -> bool | None:
        session = agentledger.current_run()
        if session is None:
            return None
        name = ctx.tool_name
        args = ctx.tool_input
        pending = _Pending(session=session)
        self._pending[id(args)] = pending
        try:
            if name in self.approve:
                decision = session.approval(f"tool:{name}", {"tool": name, "args": args})
                if not decision.approved:
                    by = decision.by or "a person"
                    pending.result = (f"The call of tool {name!r} was rejected by {by}"
                                      + (f": {decision.note}" if decision.note else "."))
                    return False
                if isinstance(decision.payload, dict):
                    args.update(decision.payload)  # edited arguments, in place as CrewAI asks
            call_id = self._call_id(name, args)
            start = session.begin(StepCall(kind=StepKind.TOOL, name=name, inputs=dict(args),
                                           call_id=call_id, policy=self.in_doubt.get(name)))
        except LedgerError as e:
            # Blocks the call; the after hook raises it past CrewAI's hook error handling.
            pending.abort = e
            raise HookAborted(reason=f"agentledger: {e}", source="agentledger") from e
        if start.replayed:
            try:
                pending.result = session.result(start)
            except Exception as e:  # a recorded failure is shown to the agent as text
                pending.result = f"Error executing tool: {e}"
            return False
        pending.start = start
        # Calls made inside the tool (a delegated coworker's) are keyed under it, and the
        # tool can read its idempotency key.
        scope_cm = agentledger.scope(f"{name}@{call_id}")
        scope_cm.__enter__()
        pending.tokens.append(scope_cm)
        pending.tokens.append(session.enter_step(start))
        return None

    def after(self, ctx: ToolCallHookContext) -> str | None:
        pending = self._pending.pop(id(ctx.tool_input), None)
        if pending is None:
            return None
        if pending.abort is not None:
            raise LedgerAbort(pending.abort)
        if pending.start is None:
            result = pending.result
            return result if isinstance(result, str) else str(result)
        step_token: Token[Any] = pending.tokens.pop()
        RunSession.exit_step(step_token)
        pending.tokens.pop().__exit__(None, None, None)
        session = pending.session
        assert session is not None
        try:
            session.record(pending.start, ctx.tool_result)
        except LedgerError as e:
            raise LedgerAbort(e) from e
        return None
