"""Where the Agents SDK's run loop is intercepted: every private SDK seam the adapter uses is
here. The SDK has no hook that can replace a model or tool call with a recorded result
(``RunHooks`` observe, ``call_model_input_filter`` edits the input, a ``ModelProvider`` misses
``Agent(model=<Model>)``), so three names inside its run loop are wrapped:

- ``get_model`` (``agents.run_internal.run_loop``): the model an agent resolved to - from the
  provider, ``RunConfig(model=...)`` or an ``Agent(model=<Model>)`` - comes back as a
  :class:`DurableModel`;
- ``_invoke_function_tool_with_metadata`` (``agents.run_internal.tool_execution``): every
  function tool call - plain, agent-as-tool, MCP - is a step keyed by the model's tool call id;
- ``get_handoffs`` (``run_loop`` and ``turn_resolution``): each handoff comes back as a copy
  whose ``on_invoke_handoff`` is a step.

Version notes: verified against openai-agents 0.24.0, where each of those modules calls the
name through its own globals (``from .turn_preparation import get_model`` and so on). Other
private names read elsewhere: ``agents.tool._FunctionToolInvocationResult`` (what the tool
seam returns), ``Handoff._agent_ref``, ``RunState._context`` (the resumed run's context for a
context-aware session), ``RunResultStreaming._stored_exception``.

A moved seam fails loudly instead of recording nothing: :func:`install` checks that each module
still calls the name it wraps (a global lookup in one of its functions), and
:func:`check_reached` raises after a run whose model answered although the model and handoff
seams were never reached.

:func:`install` / :func:`uninstall` are idempotent, and each wrapper calls straight through
when no agentledger run is active, so plain ``Runner.run`` behaves as before. The user's agents,
tools and handoffs are never modified: handoffs are copied, tools and models are wrapped at
the call site.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import agents.run_internal.run_loop as _run_loop
import agents.run_internal.tool_execution as _tool_execution
import agents.run_internal.turn_resolution as _turn_resolution
import agents.tool as _tool
from agents.handoffs import Handoff
from agents.tool import FunctionTool
from agents.tool_context import ToolContext

import agentledger
from agentledger import InDoubtPolicy, LedgerError, StepCall, StepKind

from ._model import DurableModel
from ._types import ToolOutcome

__all__ = ["check_reached", "install", "installed", "seams_watched", "uninstall"]

_lock = threading.Lock()
_originals: dict[tuple[Any, str], Any] = {}
_TOOL_INVOKE = "_invoke_function_tool_with_metadata"


def installed() -> bool:
    return bool(_originals)


def install() -> None:
    """Wrap the run loop's model, tool and handoff call sites (no-op if already done)."""
    with _lock:
        if _originals:
            return
        targets: list[tuple[Any, str, Callable[[Any], Any]]] = [
            (_run_loop, "get_model", _wrap_get_model),
            (_tool_execution, _TOOL_INVOKE, _wrap_tool_invoke),
            (_run_loop, "get_handoffs", _wrap_get_handoffs),
            (_turn_resolution, "get_handoffs", _wrap_get_handoffs),
        ]
        for module, name, _ in targets:
            if not callable(getattr(module, name, None)):
                raise RuntimeError(
                    f"agentledger.openai_agents: {module.__name__}.{name} is missing; this "
                    "openai-agents version is not supported (tested with 0.24)")
            if not _called_in(module, name):
                raise RuntimeError(
                    f"agentledger.openai_agents: no function of {module.__name__} calls "
                    f"{name} any more, so wrapping it would record nothing; this "
                    "openai-agents version is not supported (tested with 0.24)")
        for module, name, wrap in targets:
            original = getattr(module, name)
            _originals[(module, name)] = original
            setattr(module, name, wrap(original))


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _called_in(module: Any, name: str) -> bool:
    """Whether a function defined in ``module`` looks ``name`` up in its globals (which is
    what a wrapper set on the module replaces)."""
    def functions(namespace: dict[str, Any]) -> Iterator[Any]:
        for value in namespace.values():
            value = getattr(value, "__func__", value)  # static and class methods
            if inspect.isfunction(value) and value.__module__ == module.__name__:
                yield value
            elif isinstance(value, type) and value.__module__ == module.__name__:
                yield from functions(dict(vars(value)))

    return any(name in _code_names(f.__code__) for f in functions(dict(vars(module))))


# ---- the self-check at run time ----------------------------------------------------------
@dataclasses.dataclass
class SeamsReached:
    model: int = 0
    handoffs: int = 0


_reached: ContextVar[SeamsReached | None] = ContextVar("agentledger_oa_seams", default=None)


@contextmanager
def seams_watched() -> Iterator[SeamsReached]:
    """Count, for one durable run, how often the model and handoff seams were reached."""
    reached = SeamsReached()
    token = _reached.set(reached)
    try:
        yield reached
    finally:
        _reached.reset(token)


def check_reached(reached: SeamsReached, model_responses: int) -> None:
    """Raise if the run's model answered but the run loop never went through the seams: the
    SDK calls its model elsewhere now, and nothing of the run was recorded."""
    if model_responses and not reached.model:
        missed = "agents.run_internal.run_loop.get_model"
    elif model_responses and not reached.handoffs:
        missed = "agents.run_internal.run_loop.get_handoffs"
    else:
        return
    raise LedgerError(
        f"agentledger.openai_agents: the run got {model_responses} model response(s) but the "
        f"SDK never called {missed}, where agentledger records them: this openai-agents "
        "version calls its model elsewhere, and the run was not recorded (tested with 0.24)")


def uninstall() -> None:
    """Put the SDK's own functions back (no-op if not installed)."""
    with _lock:
        for (module, name), original in _originals.items():
            setattr(module, name, original)
        _originals.clear()


# ---- models ------------------------------------------------------------------------------
def _wrap_get_model(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_model(agent: Any, run_config: Any) -> Any:
        model = original(agent, run_config)
        if agentledger.current_run() is None:
            return model
        reached = _reached.get()
        if reached is not None:
            reached.model += 1
        if isinstance(model, DurableModel):
            return model
        return DurableModel(model, agent.name)

    return get_model


# ---- function tools ----------------------------------------------------------------------
def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def _wrap_tool_invoke(original: Callable[..., Any]) -> Callable[..., Any]:
    result_cls = _tool._FunctionToolInvocationResult

    async def invoke(*, function_tool: FunctionTool, context: ToolContext[Any],
                     arguments: str) -> Any:
        session = agentledger.current_run()
        call_id = getattr(context, "tool_call_id", None)
        if session is None or not call_id:
            return await original(function_tool=function_tool, context=context,
                                  arguments=arguments)
        nested_agent = bool(getattr(function_tool, "_is_agent_tool", False))
        call = StepCall(kind=StepKind.TOOL, name=function_tool.name,
                        inputs={"arguments": _arguments(arguments)}, call_id=call_id,
                        # Every call inside a nested run is a step of its own, so running
                        # the nested run again replays what it had done.
                        policy=InDoubtPolicy.RERUN if nested_agent else None)

        async def body() -> ToolOutcome:
            if nested_agent:
                with agentledger.scope(f"agent-tool:{call_id}"):
                    done = await original(function_tool=function_tool, context=context,
                                          arguments=arguments)
            else:
                done = await original(function_tool=function_tool, context=context,
                                      arguments=arguments)
            return ToolOutcome(done.output, bool(done.is_sdk_generated_error))

        outcome = await session.acall(call, body)
        if not isinstance(outcome, ToolOutcome):
            raise TypeError(f"tool step {function_tool.name}@{call_id} holds a "
                            f"{type(outcome).__name__}, not a tool outcome")
        return result_cls(outcome.output, is_sdk_generated_error=outcome.sdk_error)

    return invoke


# ---- handoffs ----------------------------------------------------------------------------
def _durable_handoff(h: Handoff[Any, Any]) -> Handoff[Any, Any]:
    original = h.on_invoke_handoff
    ref = h._agent_ref

    async def on_invoke_handoff(context: Any, arguments: str) -> Any:
        session = agentledger.current_run()
        if session is None:
            return await original(context, arguments)
        target = ref() if ref is not None else None
        call = StepCall(kind=StepKind.TOOL, name=h.tool_name,
                        inputs={"arguments": _arguments(arguments)})
        start = await session.abegin(call)
        if start.replayed:
            name = session.result(start)
            if target is not None and target.name == name:
                return target
            # A custom Handoff without a known target: its callback must run to name it.
            return await original(context, arguments)
        try:
            agent = await original(context, arguments)
        except Exception as e:
            await session.arecord(start, error=e)
            raise
        await session.arecord(start, agent.name)
        return agent

    copy = dataclasses.replace(h, on_invoke_handoff=on_invoke_handoff)
    copy._agent_ref = ref
    return copy


def _wrap_get_handoffs(original: Callable[..., Any]) -> Callable[..., Any]:
    async def get_handoffs(agent: Any, context_wrapper: Any) -> list[Handoff[Any, Any]]:
        found: list[Handoff[Any, Any]] = await original(agent, context_wrapper)
        if agentledger.current_run() is None:
            return found
        reached = _reached.get()
        if reached is not None:
            reached.handoffs += 1
        return [_durable_handoff(h) for h in found]

    return get_handoffs
