"""``DurableRunner``: ``Runner`` with every model call, tool call and handoff a durable step.

A run is named by ``run_id``. Starting it again with the same id (after a crash, in another
process) runs the agent loop again from its input: every call that completed is answered from
its record, and the loop goes on live from the call that was in flight.

Human approval: when the SDK stops for a ``needs_approval`` tool, the run's ``RunState`` is kept
in Redis (a key of the run, expired and deleted with it) and one approval step per interruption
waits for a person. ``ledger.decide`` / ``agentledger approve`` records the decision;
``DurableRunner.resume(run_id)`` or the same ``run`` call applies the decisions to the saved
state and continues. The approved tool is a step keyed by its call id, so resuming twice, or
after a crash during the resume, does not run it again.

Inside a run that is already active in this context with the same id on the same Redis and
prefix (an ``App`` pipeline executed by a worker), ``run`` records into that run instead of
opening it again, and leaves finishing it to its opener: a stop for approval raises
:class:`agentledger.ApprovalPending` (the worker sets the run waiting, and continues it once
decided), a failure propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from agents import Agent, Runner, RunResult, RunResultStreaming, RunState, UserError
from agents.items import ToolApprovalItem

from agentledger import (
    ApprovalPending,
    Decision,
    Ledger,
    LedgerError,
    RunSession,
    RunStatus,
    StepCall,
    StepKind,
)
from agentledger._context import joinable_run

from ._memory import rewind_session
from ._model import model_scope
from ._patch import SeamsReached, check_reached, install, seams_watched
from ._types import prepare_codec

__all__ = ["DurableRunner"]

log = logging.getLogger("agentledger.openai_agents")

KIND = "openai-agents"
STATE_KEY = "oa-state"
_STATE_VERSION = 1
_default: Ledger | None = None
# Starting agents of runs of this process that wait for a person, so that resume(run_id)
# can do without one; dropped when the run ends.
_agents: dict[tuple[str, str], Agent[Any]] = {}


def _ledger(ledger: Ledger | None) -> Ledger:
    global _default
    if ledger is None:
        if _default is None:
            _default = Ledger.from_url()
        ledger = _default
    prepare_codec(ledger.codec)
    install()
    return ledger


def _ledger_for(run_id: str, ledger: Ledger | None) -> Ledger:
    """The ledger of the active run ``run_id`` when there is one to join, else ``_ledger``."""
    joined = joinable_run(run_id, ledger)
    return _ledger(joined.ledger if joined is not None else ledger)


# ---- the saved RunState ------------------------------------------------------------------
def _state_blob(result: RunResult | RunResultStreaming, round_no: int) -> str:
    return json.dumps({"v": _STATE_VERSION, "round": round_no,
                       "state": result.to_state().to_json()}, separators=(",", ":"))


def _parse_state(key: str, raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise LedgerError(f"{key}: saved run state is not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("v") != _STATE_VERSION or "state" not in data:
        raise LedgerError(f"{key}: saved run state has an unknown layout or version")
    return data


def _load_state(session: RunSession) -> dict[str, Any] | None:
    if session.is_new:  # a saved state belongs to a run that recorded its approval step
        return None
    return _parse_state(session.keys.extra(STATE_KEY), session.get_blob(STATE_KEY))


async def _aload_state(session: RunSession) -> dict[str, Any] | None:
    if session.is_new:
        return None
    return _parse_state(session.keys.extra(STATE_KEY), await session.aget_blob(STATE_KEY))


async def _has_state(ledger: Ledger, run_id: str) -> bool:
    with ledger.redis_errors():
        return bool(await ledger.async_client().exists(ledger.keys(run_id).extra(STATE_KEY)))


# ---- approvals ---------------------------------------------------------------------------
def _approval_call(item: ToolApprovalItem) -> StepCall:
    name = item.tool_name or item.name or "tool"
    try:
        arguments: Any = json.loads(item.arguments or "{}")
    except ValueError:
        arguments = item.arguments
    return StepCall(kind=StepKind.APPROVAL, name=name, call_id=item.call_id, scope="",
                    inputs={"tool": name, "arguments": arguments, "agent": item.agent.name})


def _as_decision(value: Any) -> Decision:
    return value if isinstance(value, Decision) else Decision.model_validate(value)


async def _ask(session: RunSession, items: list[ToolApprovalItem]
               ) -> list[Decision | ApprovalPending]:
    """Each interruption's decision, recording a request for those without one."""
    out: list[Decision | ApprovalPending] = []
    for item in items:
        try:
            start = await session.abegin(_approval_call(item))
        except ApprovalPending as e:
            out.append(e)
            continue
        out.append(_as_decision(session.result(start)) if start.replayed else
                   ApprovalPending(session.run_id, start.key, start.preview))
    return out


def _ask_sync(session: RunSession, items: list[ToolApprovalItem]) -> None:
    for item in items:
        with contextlib.suppress(ApprovalPending):
            session.begin(_approval_call(item))


def _apply(state: RunState[Any], items: list[ToolApprovalItem],
           decisions: list[Decision | ApprovalPending]) -> None:
    ready: list[Decision] = []
    for decision in decisions:
        if isinstance(decision, ApprovalPending):
            raise decision
        ready.append(decision)
    for item, decision in zip(items, ready, strict=True):
        if decision.approved:
            state.approve(item)
        else:
            state.reject(item, rejection_message=decision.note or None)


class DurableRunner:
    """``Runner.run``/``run_sync``/``run_streamed`` with ``run_id`` (and ``ledger``): each
    model call, function tool call and handoff of the run is a durable step in Redis."""

    @classmethod
    async def run(cls, starting_agent: Agent[Any], input: Any, *, run_id: str,
                  ledger: Ledger | None = None, durability: str | None = None,
                  **kwargs: Any) -> RunResult:
        """Run (or continue) the run ``run_id``. ``durability``: 'sync' | 'async' | 'exit'
        for this run's step records (None: the ledger's; see docs/durability.md). Returns ``Runner.run``'s result; when a tool
        needs approval the result has ``interruptions`` and the run waits. Called again while
        a decision is missing, raises :class:`agentledger.ApprovalPending`."""
        joined = joinable_run(run_id, ledger)
        led = _ledger(joined.ledger if joined is not None else ledger)
        session = joined or await led.aopen_run(run_id, kind=KIND)
        token = None
        level_before = None
        if joined is None:
            session.use_durability(durability)
            token = session.activate()
        else:  # this runner's own durability= applies to its calls in the joined run
            level_before = session.join_durability(durability)
        asked: list[Decision | ApprovalPending] = []
        try:
            saved = await _aload_state(session)
            round_no = 0 if saved is None else int(saved.get("round", 1))
            state = (None if saved is None
                     else await RunState.from_json(starting_agent, saved["state"]))
            if kwargs.get("session") is not None:
                context = kwargs.get("context")
                if context is None and state is not None:
                    context = state._context  # the resumed run's own context wrapper
                await rewind_session(led, run_id, kwargs["session"], round_no,
                                     context=context, run_config=kwargs.get("run_config"))
            with seams_watched() as reached:
                if state is None:
                    result = await Runner.run(starting_agent, input, **kwargs)
                else:
                    items = state.get_interruptions()
                    _apply(state, items, await _ask(session, items))
                    scope_token = model_scope.set(f"r{round_no}")
                    try:
                        result = await Runner.run(starting_agent, state, **kwargs)
                    finally:
                        model_scope.reset(scope_token)
            check_reached(reached, len(result.raw_responses))
            unsaved: LedgerError | None = None
            if result.interruptions:
                try:
                    blob = _state_blob(result, round_no + 1)
                except (UserError, TypeError, ValueError) as e:
                    # The SDK hands the interrupted result back whether or not its state can
                    # be serialised; so do we, but this run cannot wait in Redis for a person.
                    unsaved = LedgerError(
                        f"run {run_id!r} stopped for an approval, but its RunState cannot be "
                        f"saved ({type(e).__name__}: {e}); make the run's context "
                        "JSON-serialisable to resume it with DurableRunner")
                    log.warning("%s", unsaved)
                else:
                    # Written under the lease's fencing token, expired and deleted with the run.
                    await session.aput_blob(STATE_KEY, blob)
                    asked = await _ask(session, list(result.interruptions))
        except ApprovalPending:
            if joined is None:
                await session.afinish(RunStatus.WAITING)
            raise
        except BaseException as e:
            if joined is None:
                await session.afinish(RunStatus.FAILED, error=e)
            raise
        finally:
            session.leave_durability(level_before)
            if token is not None:
                session.deactivate(token)
        if joined is not None:  # the run's opener finishes it, from what this raises
            if unsaved is not None:
                raise unsaved
            for waiting in asked:
                if isinstance(waiting, ApprovalPending):
                    raise waiting
            return result
        if unsaved is not None:
            await session.afinish(RunStatus.FAILED, error=unsaved)
        elif result.interruptions:
            _agents[(led.prefix, run_id)] = starting_agent
            await session.afinish(RunStatus.WAITING)
        else:
            _agents.pop((led.prefix, run_id), None)
            await session.afinish(RunStatus.COMPLETED)
        return result

    @classmethod
    async def resume(cls, run_id: str, starting_agent: Agent[Any] | None = None, *,
                     ledger: Ledger | None = None, **kwargs: Any) -> RunResult:
        """Continue a run that waited for approval, with the recorded decisions. The starting
        agent may be left out in the process that began the run."""
        led = _ledger_for(run_id, ledger)
        agent = starting_agent or _agents.get((led.prefix, run_id))
        if agent is None:
            raise LedgerError(f"resume({run_id!r}) needs the run's starting agent in a new "
                              "process: DurableRunner.resume(run_id, agent)")
        if not await _has_state(led, run_id):
            raise LedgerError(f"run {run_id!r} has no saved state to resume: it never waited "
                              "for an approval (start it with DurableRunner.run)")
        return await cls.run(agent, None, run_id=run_id, ledger=led, **kwargs)

    @classmethod
    def run_sync(cls, starting_agent: Agent[Any], input: Any, *, run_id: str,
                 ledger: Ledger | None = None, **kwargs: Any) -> RunResult:
        """The synchronous form of :meth:`run` (not from inside a running event loop)."""
        led = _ledger_for(run_id, ledger)

        async def main() -> RunResult:
            try:
                return await cls.run(starting_agent, input, run_id=run_id, ledger=led, **kwargs)
            finally:
                await led.aclose()

        return asyncio.run(main())

    @classmethod
    def resume_sync(cls, run_id: str, starting_agent: Agent[Any] | None = None, *,
                    ledger: Ledger | None = None, **kwargs: Any) -> RunResult:
        led = _ledger_for(run_id, ledger)

        async def main() -> RunResult:
            try:
                return await cls.resume(run_id, starting_agent, ledger=led, **kwargs)
            finally:
                await led.aclose()

        return asyncio.run(main())

    @classmethod
    def run_streamed(cls, starting_agent: Agent[Any], input: Any, *, run_id: str,
                     ledger: Ledger | None = None, **kwargs: Any) -> RunResultStreaming:
        """``Runner.run_streamed`` as run ``run_id``: live calls stream as they happen,
        recorded ones from their records. A run waiting for approval is continued with
        :meth:`resume` (not streamed)."""
        if joinable_run(run_id, ledger) is not None:
            raise LedgerError(f"run {run_id!r} is already active here (a worker's pipeline?): "
                              "inside it, use DurableRunner.run, not run_streamed")
        led = _ledger(ledger)
        session = led.open_run(run_id, kind=KIND)
        # The streamed run records on the SDK's event loop and ends from a callback (a
        # synchronous finish): every record is acknowledged as it is made.
        session.use_durability("sync")
        token = session.activate()
        try:
            if _load_state(session) is not None:
                raise LedgerError(f"run {run_id!r} waited for an approval; continue it with "
                                  "DurableRunner.resume(run_id)")
            # The run loop task copies this context, so its calls record into the session.
            with seams_watched() as reached:
                streamed = Runner.run_streamed(starting_agent, input, **kwargs)
        except BaseException as e:
            session.finish(RunStatus.FAILED, error=e)
            raise
        finally:
            session.deactivate(token)
        task = streamed.run_loop_task
        if task is None:
            session.finish(RunStatus.FAILED, error=LedgerError("the SDK started no run loop"))
            raise LedgerError("Runner.run_streamed started no run loop task")
        task.add_done_callback(
            lambda t: _finish_streamed(session, led, run_id, starting_agent, streamed, t,
                                       reached))
        return streamed


def _finish_streamed(session: RunSession, ledger: Ledger, run_id: str, agent: Agent[Any],
                     streamed: RunResultStreaming, task: asyncio.Task[Any],
                     reached: SeamsReached) -> None:
    """Record how a streamed run ended (a done callback: one synchronous round trip)."""
    try:
        error: BaseException | None
        if task.cancelled():
            error = asyncio.CancelledError("the streamed run was cancelled")
        else:
            error = task.exception() or streamed._stored_exception
        if error is None:
            try:
                check_reached(reached, len(streamed.raw_responses))
            except LedgerError as e:
                # Nothing else reports from a done callback: the caller sees it in the log
                # and in the run's record.
                log.error("%s", e)
                error = e
        if error is not None:
            session.finish(RunStatus.FAILED, error=error)
        elif streamed.interruptions:
            _agents[(ledger.prefix, run_id)] = agent  # see resume()
            session.put_blob(STATE_KEY, _state_blob(streamed, 1))
            _ask_sync(session, list(streamed.interruptions))
            session.finish(RunStatus.WAITING)
        else:
            session.finish(RunStatus.COMPLETED)
    except Exception:
        log.exception("agentledger: could not record the end of streamed run %r", run_id)
