"""``DurableCrewHandler``: attach to an existing crew, and each of its LLM calls, tool calls,
tasks and human reviews becomes a durable step of one agentledger run.

    crew = Crew(agents=[...], tasks=[...])                  # unchanged
    DurableCrewHandler(run_id="launch-7").attach(crew)
    crew.kickoff(inputs={...})                              # also kickoff_async / akickoff

What ``attach`` changes, on this crew only (``detach`` puts all of it back):
- each agent's ``llm`` and ``function_calling_llm``, the crew's ``manager_llm``,
  ``function_calling_llm`` and ``planning_llm`` become :class:`DurableLLM` proxies;
- the crew's kickoff methods open the run around CrewAI's own, and install the tool hooks
  and the human-input provider in CrewAI's execution-scoped registries for that kickoff;
- each task's execution is a step: a task whose output was recorded is not run again.

A kickoff inside a run already active in this context with the same id on the same Redis and
prefix (an ``App`` pipeline executed by a worker) records into that run instead of opening it
again, and leaves finishing it to its opener: a human review with no decision yet raises
:class:`agentledger.ApprovalPending` (the worker sets the run waiting), a failure propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import agentledger
from agentledger import (
    ApprovalPending,
    InDoubtPolicy,
    Ledger,
    LedgerError,
    RunSession,
    RunStatus,
    StepCall,
    StepKind,
    check_run_id,
)
from agentledger._context import joinable_run
from crewai.core.providers.human_input import reset_provider, set_provider
from crewai.crew import Crew
from crewai.hooks.dispatch import (
    InterceptionPoint,
    get_scoped_hooks,
    register_scoped,
    scoped_hooks,
)
from crewai.llms.base_llm import BaseLLM
from crewai.task import Task

from ._abort import LedgerAbort, unwrap
from ._human import LedgerHumanInput
from ._llm import DurableLLM
from ._seams import check_seams, check_tasks_reached
from ._tools import ToolSteps
from ._types import register_crewai_types

__all__ = ["DurableCrewHandler"]

T = TypeVar("T")
_KICKOFFS = ("kickoff", "akickoff", "kickoff_for_each", "kickoff_for_each_async",
             "akickoff_for_each")


class DurableCrewHandler:
    """Makes one crew's kickoffs durable runs named ``run_id``.

    ``ledger``: where the run lives (default: ``Ledger.from_url()``, i.e. ``AGENTLEDGER_URL``
    or the embedded Redis). ``approve_tools``: tool names that wait for a person's decision
    before each call (``agentledger approve``). ``in_doubt``: per tool name, what a restarted
    run does with a call that started and recorded no outcome ('rerun' with the same
    idempotency key, 'fail', or 'ask' a person). ``on_busy``: what to do if another live
    process holds the run ('wait', 'fail', 'takeover'). ``durability``: 'sync' | 'async' |
    'exit' for the run's step records (None: the ledger's; see docs/durability.md).
    """

    def __init__(self, run_id: str, *, ledger: Ledger | None = None,
                 approve_tools: Iterable[str] = (),
                 in_doubt: Mapping[str, InDoubtPolicy | str] | None = None,
                 on_busy: str = "wait", durability: str | None = None) -> None:
        self.run_id = check_run_id(run_id)
        self.durability = durability
        self._ledger = ledger
        self.approve_tools = frozenset(approve_tools)
        self.in_doubt = {name: InDoubtPolicy(p) for name, p in (in_doubt or {}).items()}
        self.on_busy = on_busy
        self.crew: Crew | None = None
        self.last_session: RunSession | None = None  # the latest kickoff's (counters)
        self._tools = ToolSteps(self.approve_tools, self.in_doubt)
        self._human = LedgerHumanInput()
        self._restore: list[tuple[Any, str, Any]] = []  # (object, attribute, original)
        self._overrides: list[tuple[Any, str]] = []  # instance attributes we added
        self._task_entries = 0  # task wrappers entered in the current kickoff

    @classmethod
    def for_flow(cls, flow: Any, name: str, **options: Any) -> DurableCrewHandler:
        """A handler for a crew kicked off inside a CrewAI Flow step: its run id is the
        flow's id (the one ``@persist`` restores) and ``name``, so a restarted flow resumes
        the crew's run."""
        state = getattr(flow, "state", None)
        flow_id = state.get("id") if isinstance(state, dict) else getattr(state, "id", None)
        if not flow_id:
            raise ValueError("the flow has no state id yet (call this inside a flow step)")
        return cls(f"flow-{flow_id}.{name}", **options)

    @staticmethod
    def flow_persistence(ledger: Ledger | None = None) -> Any:
        """A CrewAI ``FlowPersistence`` on ``ledger`` (see ``LedgerFlowPersistence``)."""
        from ._flow import LedgerFlowPersistence

        return LedgerFlowPersistence(ledger=ledger or Ledger.from_url())

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            joined = joinable_run(self.run_id)  # inside the run already (a worker's pipeline)
            self._ledger = joined.ledger if joined is not None else Ledger.from_url()
        return self._ledger

    # ---- attach / detach ------------------------------------------------------------------
    def attach(self, crew: Crew) -> DurableCrewHandler:
        """Make ``crew``'s kickoffs durable. Returns the handler."""
        if not isinstance(crew, Crew):
            raise TypeError(f"attach() takes a crewai Crew, not {type(crew).__name__}")
        if self.crew is not None:
            raise RuntimeError("this handler is attached already; detach() it first")
        if isinstance(crew.__dict__.get("kickoff"), _Kickoff):
            raise RuntimeError("this crew has a DurableCrewHandler attached already")
        check_seams({type(task) for task in crew.tasks})
        codec = self.ledger.codec
        register_crewai_types(codec)
        self.crew = crew
        for agent in crew.agents:
            self._proxy(agent, "llm", agent.role)
            self._proxy(agent, "function_calling_llm", f"{agent.role}.function_calling")
        self._proxy(crew, "manager_llm", "manager")
        self._proxy(crew, "function_calling_llm", "crew.function_calling")
        self._proxy(crew, "planning_llm", "planner")
        if crew.manager_agent is not None:
            self._proxy(crew.manager_agent, "llm", crew.manager_agent.role)
        for index, task in enumerate(crew.tasks):
            for model in (task.output_pydantic, task.output_json):
                if model is not None and not codec.knows(model):
                    codec.register_pydantic(model)
            self._override(task, "_execute_core", self._task_sync(task, index))
            self._override(task, "_aexecute_core", self._task_async(task, index))
        self._override(crew, "kickoff", _Kickoff(self, crew))
        self._override(crew, "akickoff", self._akickoff(crew))
        self._override(crew, "kickoff_for_each", self._kickoff_for_each(crew))
        self._override(crew, "kickoff_for_each_async", self._kickoff_for_each_async(crew))
        self._override(crew, "akickoff_for_each", self._akickoff_for_each(crew))
        return self

    def detach(self) -> None:
        """Put back everything ``attach`` changed. Idempotent."""
        crew = self.crew
        if crew is not None and crew.manager_agent is not None:
            # A manager CrewAI built from our proxied manager_llm keeps the proxy.
            llm = crew.manager_agent.llm
            if isinstance(llm, DurableLLM):
                crew.manager_agent.llm = llm.inner
        for obj, attr, original in reversed(self._restore):
            setattr(obj, attr, original)
        for obj, attr in reversed(self._overrides):
            obj.__dict__.pop(attr, None)
        self._restore.clear()
        self._overrides.clear()
        self.crew = None

    def _proxy(self, obj: Any, attr: str, label: str) -> None:
        # Read the field's value directly: CrewAI marks some of these fields deprecated
        # (``function_calling_llm``) and reading them as attributes warns on every attach.
        llm = vars(obj).get(attr)
        if not isinstance(llm, BaseLLM) or isinstance(llm, DurableLLM):
            return
        setattr(obj, attr, DurableLLM.wrap(llm, label))
        self._restore.append((obj, attr, llm))

    def _override(self, obj: Any, attr: str, value: Any) -> None:
        # An instance attribute shadows the class's method for this object only (pydantic
        # models keep their fields elsewhere, so model_dump and copy do not see it).
        object.__setattr__(obj, attr, value)
        self._overrides.append((obj, attr))

    # ---- runs -----------------------------------------------------------------------------
    def _enter(self, session: RunSession, joined: bool) -> tuple[Any, Any, Any, Any]:
        self.last_session = session
        self._tools.reset()
        self._task_entries = 0
        token = None if joined else session.activate()
        # Keep any scoped hooks the caller had, and add ours after them.
        inherited = {p: get_scoped_hooks(p) for p in InterceptionPoint}
        scope_cm = scoped_hooks({p: h for p, h in inherited.items() if h})
        scope_cm.__enter__()
        register_scoped(InterceptionPoint.PRE_TOOL_CALL, self._tools.before)
        register_scoped(InterceptionPoint.POST_TOOL_CALL, self._tools.after)
        provider_token = set_provider(self._human)
        return session, token, scope_cm, provider_token

    @staticmethod
    def _leave(entered: tuple[Any, Any, Any, Any]) -> None:
        session, token, scope_cm, provider_token = entered
        reset_provider(provider_token)
        scope_cm.__exit__(None, None, None)
        if token is not None:
            session.deactivate(token)

    @staticmethod
    def _outcome(error: BaseException | None) -> tuple[RunStatus, BaseException | None]:
        if error is None:
            return RunStatus.COMPLETED, None
        ledger_error = unwrap(error) if isinstance(error, Exception) else None
        if isinstance(ledger_error, ApprovalPending):
            return RunStatus.WAITING, ledger_error
        return RunStatus.FAILED, ledger_error or error

    def run_sync(self, body: Callable[[], T]) -> T:
        """Run ``body`` as this handler's run (what the wrapped ``kickoff`` does)."""
        joined = joinable_run(self.run_id, self.ledger)
        session = joined or self.ledger.open_run(self.run_id, kind="crewai",
                                                 on_busy=self.on_busy)
        level_before = None
        if joined is None:
            session.use_durability(self.durability)
        else:  # this handler's own durability= applies to its calls in the joined run
            level_before = session.join_durability(self.durability)
        entered = self._enter(session, joined is not None)
        try:
            result = body()
            check_tasks_reached(result, self._task_entries)
        except BaseException as e:
            status, error = self._outcome(e)
            self._leave(entered)
            session.leave_durability(level_before)
            if joined is None:
                session.finish(status, error if status == RunStatus.FAILED else None)
            if error is not None and error is not e:
                raise error from e
            raise
        self._leave(entered)
        session.leave_durability(level_before)
        if joined is None:
            session.finish(RunStatus.COMPLETED)
        return result

    async def run_async(self, body: Callable[[], Awaitable[T]]) -> T:
        joined = joinable_run(self.run_id, self.ledger)
        session = joined or await self.ledger.aopen_run(self.run_id, kind="crewai",
                                                        on_busy=self.on_busy)
        level_before = None
        if joined is None:
            session.use_durability(self.durability)
        else:  # this handler's own durability= applies to its calls in the joined run
            level_before = session.join_durability(self.durability)
        entered = self._enter(session, joined is not None)
        try:
            result = await body()
            check_tasks_reached(result, self._task_entries)
        except BaseException as e:
            status, error = self._outcome(e)
            self._leave(entered)
            session.leave_durability(level_before)
            if joined is None:
                await session.afinish(status, error if status == RunStatus.FAILED else None)
            if error is not None and error is not e:
                raise error from e
            raise
        self._leave(entered)
        session.leave_durability(level_before)
        if joined is None:
            await session.afinish(RunStatus.COMPLETED)
        return result

    # ---- kickoffs -------------------------------------------------------------------------
    def _akickoff(self, crew: Crew) -> Callable[..., Awaitable[Any]]:
        original = type(crew).akickoff

        async def akickoff(inputs: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
            return await self.run_async(lambda: original(crew, inputs, *args, **kwargs))

        return akickoff

    def child(self, index: int) -> DurableCrewHandler:
        """The handler of ``kickoff_for_each``'s input number ``index``: its own run id."""
        return DurableCrewHandler(f"{self.run_id}.{index}", ledger=self.ledger,
                                  approve_tools=self.approve_tools, in_doubt=self.in_doubt,
                                  on_busy=self.on_busy)

    def _kickoff_for_each(self, crew: Crew) -> Callable[..., list[Any]]:
        def kickoff_for_each(inputs: list[dict[str, Any]], input_files: Any = None) -> list[Any]:
            results = []
            for index, input_data in enumerate(inputs):
                copy = crew.copy()
                child = self.child(index).attach(copy)
                try:
                    results.append(copy.kickoff(inputs=input_data, input_files=input_files))
                finally:
                    child.detach()
            return results

        return kickoff_for_each

    def _for_each_async(self, crew: Crew, method: str) -> Callable[..., Awaitable[list[Any]]]:
        async def for_each(inputs: list[dict[str, Any]], input_files: Any = None) -> list[Any]:
            async def one(index: int, input_data: dict[str, Any]) -> Any:
                copy = crew.copy()
                child = self.child(index).attach(copy)
                try:
                    return await getattr(copy, method)(inputs=input_data,
                                                       input_files=input_files)
                finally:
                    child.detach()

            return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(inputs))))

        return for_each

    def _kickoff_for_each_async(self, crew: Crew) -> Callable[..., Awaitable[list[Any]]]:
        return self._for_each_async(crew, "kickoff_async")

    def _akickoff_for_each(self, crew: Crew) -> Callable[..., Awaitable[list[Any]]]:
        return self._for_each_async(crew, "akickoff")

    # ---- tasks ----------------------------------------------------------------------------
    @staticmethod
    def _task_step(task: Task, context: str | None) -> StepCall:
        return StepCall(kind=StepKind.STEP, name="task", intent=False,
                        inputs={"description": task.description,
                                "expected_output": task.expected_output, "context": context},
                        preview=task.description[:160])

    @staticmethod
    def _task_scope(task: Task, index: int, agent: Any) -> str:
        # Task position and agent role: the same on every construction of the crew.
        role = getattr(agent or task.agent, "role", None) or "none"
        return f"task{index}:{role}"

    def _task_sync(self, task: Task, index: int) -> Callable[..., Any]:
        original = type(task)._execute_core

        def execute_core(agent: Any, context: str | None, tools: Any) -> Any:
            session = agentledger.current_run()
            if session is None:
                return original(task, agent, context, tools)
            self._task_entries += 1
            with agentledger.scope(self._task_scope(task, index, agent)):
                try:
                    start = session.begin(self._task_step(task, context))
                except LedgerError as e:
                    raise LedgerAbort(e) from e
                if start.replayed:
                    output = session.result(start)
                    task.output = output
                    return output
                output = original(task, agent, context, tools)
                try:
                    session.record(start, output)
                except LedgerError as e:
                    raise LedgerAbort(e) from e
                return output

        return execute_core

    def _task_async(self, task: Task, index: int) -> Callable[..., Awaitable[Any]]:
        original = type(task)._aexecute_core

        async def aexecute_core(agent: Any, context: str | None, tools: Any) -> Any:
            session = agentledger.current_run()
            if session is None:
                return await original(task, agent, context, tools)
            self._task_entries += 1
            with agentledger.scope(self._task_scope(task, index, agent)):
                try:
                    start = await session.abegin(self._task_step(task, context))
                except LedgerError as e:
                    raise LedgerAbort(e) from e
                if start.replayed:
                    output = session.result(start)
                    task.output = output
                    return output
                output = await original(task, agent, context, tools)
                try:
                    await session.arecord(start, output)
                except LedgerError as e:
                    raise LedgerAbort(e) from e
                return output

        return aexecute_core


class _Kickoff:
    """The crew's ``kickoff`` while a handler is attached (``kickoff_async`` runs it in a
    thread, so it covers that too)."""

    def __init__(self, handler: DurableCrewHandler, crew: Crew) -> None:
        self.handler = handler
        self.crew = crew

    def __call__(self, inputs: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        original = type(self.crew).kickoff
        return self.handler.run_sync(lambda: original(self.crew, inputs, *args, **kwargs))
