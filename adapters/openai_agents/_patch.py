"""Where the Agents SDK's run loop is intercepted. The SDK has no hook that can replace a
model or tool call with a recorded result, so three names inside its run loop are wrapped:

- ``get_model`` (run loop): the model an agent resolved to - from the provider,
  ``RunConfig(model=...)`` or an ``Agent(model=<Model>)`` - comes back as a :class:`DurableModel`;
- ``_invoke_function_tool_with_metadata`` (tool execution): every function tool call - plain,
  agent-as-tool, MCP - is a step keyed by the model's tool call id;
- ``get_handoffs`` (run loop, turn resolution): each handoff comes back as a copy whose
  ``on_invoke_handoff`` is a step.

:func:`install` / :func:`uninstall` are idempotent, and each wrapper calls straight through
when no agentledger run is active, so plain ``Runner.run`` behaves as before. The user's agents,
tools and handoffs are never modified: handoffs are copied, tools and models are wrapped at
the call site.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

import agents.run_internal.run_loop as _run_loop
import agents.run_internal.tool_execution as _tool_execution
import agents.run_internal.turn_resolution as _turn_resolution
import agents.tool as _tool
from agents.handoffs import Handoff
from agents.tool import FunctionTool
from agents.tool_context import ToolContext

import agentledger
from agentledger import InDoubtPolicy, StepCall, StepKind

from ._model import DurableModel
from ._types import ToolOutcome

__all__ = ["install", "installed", "uninstall"]

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
        for module, name, wrap in targets:
            original = getattr(module, name)
            _originals[(module, name)] = original
            setattr(module, name, wrap(original))


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
        if agentledger.current_run() is None or isinstance(model, DurableModel):
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
        return [_durable_handoff(h) for h in found]

    return get_handoffs
