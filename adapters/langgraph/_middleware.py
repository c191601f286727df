"""``DurableMiddleware``: durable model and tool calls through ``create_agent``'s supported
middleware API.

    agent = create_agent(model, tools, middleware=[DurableMiddleware()],
                         checkpointer=DurableCheckpointer.from_url())

Each model call is an LLM step (one round trip) whose value is the ``ModelResponse``; each
tool call is a tool step keyed by its ``tool_call_id``. The keys are the ones the checkpointer's
own recording uses, and while the middleware records a call the recording below it stands aside,
so the two together never record a call twice. Without a durable checkpointer, the middleware
records into the run active around the agent (``with ledger.run(thread_id): agent.invoke(...)``);
with no run active it does nothing.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain.agents.middleware.types import ExtendedModelResponse, ModelResponse

from agentledger import Codec, RunSession, StepCall, StepKind, _context

from ._lg_calls import arun_live, normalise_messages, prepare_codec, run_live
from ._lg_scope import TaskScope, active, node_attempt, task_segment

__all__ = ["DurableMiddleware"]

_fallback: weakref.WeakKeyDictionary[RunSession, dict[str, TaskScope]] = (
    weakref.WeakKeyDictionary())
_fallback_lock = threading.Lock()
_prepared: weakref.WeakSet[Codec] = weakref.WeakSet()


def _prepare(codec: Codec) -> None:
    if codec in _prepared:
        return
    prepare_codec(codec)
    for cls in (ModelResponse, ExtendedModelResponse):
        if not codec.knows(cls):
            codec.register_dataclass(cls, f"langchain.{cls.__name__}")
    _prepared.add(codec)


def _task_of_config(session: RunSession) -> TaskScope | None:
    """A task scope from the node's config, for runs that the graph lifecycle did not open."""
    from langgraph.config import get_config
    from langgraph.runtime import get_runtime

    try:
        config = get_config()
    except RuntimeError:
        return None
    meta = config.get("metadata") or {}
    try:
        info = get_runtime().execution_info
    except RuntimeError:
        info = None
    task_id = str(getattr(info, "task_id", "") or "")
    segment = task_segment(str(meta.get("langgraph_node", "?")),
                           meta.get("langgraph_step", "?"),
                           tuple(meta.get("langgraph_path", ())))
    with _fallback_lock:
        tasks = _fallback.setdefault(session, {})
        task = tasks.get(task_id)
        if task is None:
            task = tasks[task_id] = TaskScope(scope=segment)
    return task


def _where() -> tuple[RunSession, TaskScope] | None:
    found = active()
    if found is not None:
        return found
    session = _context._session.get()
    if session is None or _context._step.get() is not None:
        return None
    task = _task_of_config(session)
    return None if task is None else (session, task)


class DurableMiddleware(AgentMiddleware):
    """Records every model and tool call of a ``create_agent`` agent as a durable step."""

    def _model_step(self, session: RunSession, task: TaskScope, request: Any) -> StepCall:
        _prepare(session.codec)
        name = type(request.model).__name__
        messages = ([request.system_message] if request.system_message else []) + list(
            request.messages)
        call_id = task.next_id(session, str(StepKind.LLM), name, node_attempt())
        return StepCall(kind=StepKind.LLM, name=name,
                        inputs={"messages": normalise_messages(messages)},
                        scope=task.scope, call_id=call_id, intent=False)

    def _tool_step(self, session: RunSession, task: TaskScope, request: Any) -> StepCall:
        _prepare(session.codec)
        call = request.tool_call
        call_id = task.next_id(session, str(StepKind.TOOL), call["name"], node_attempt(),
                               call_id=call.get("id"))
        return StepCall(kind=StepKind.TOOL, name=call["name"], inputs={"args": call["args"]},
                        scope=task.scope, call_id=call_id)

    # ---- model calls ----------------------------------------------------------------------
    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        where = _where()
        if where is None:
            return handler(request)
        session, task = where
        start = session.begin(self._model_step(session, task, request))
        if start.replayed:
            return session.result(start)
        # While the step is current, the recording below the middleware stands aside.
        return run_live(session, start, lambda: handler(request), False)

    async def awrap_model_call(self, request: Any,
                               handler: Callable[[Any], Awaitable[Any]]) -> Any:
        where = _where()
        if where is None:
            return await handler(request)
        session, task = where
        start = await session.abegin(self._model_step(session, task, request))
        if start.replayed:
            return session.result(start)
        return await arun_live(session, start, lambda: handler(request), False)

    # ---- tool calls -----------------------------------------------------------------------
    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        where = _where()
        if where is None:
            return handler(request)
        session, task = where
        start = session.begin(self._tool_step(session, task, request))
        if start.replayed:
            return session.result(start)
        return run_live(session, start, lambda: handler(request), True)

    async def awrap_tool_call(self, request: Any,
                              handler: Callable[[Any], Awaitable[Any]]) -> Any:
        where = _where()
        if where is None:
            return await handler(request)
        session, task = where
        start = await session.abegin(self._tool_step(session, task, request))
        if start.replayed:
            return session.result(start)
        return await arun_live(session, start, lambda: handler(request), True)

