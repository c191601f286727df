"""Chat-model and tool calls as durable steps: what is recorded, how it is keyed and replayed.

A model call is an LLM step recorded in one round trip (``intent=False``); its value is the
``AIMessage`` (content, tool calls and their ids, usage), and a replayed stream yields it again
as one chunk. A model call that raises is not recorded: it has no side effect, and the next
attempt asks again. A tool call is an intent + outcome step keyed by the model's
``tool_call_id`` when it has one; its value is what ``BaseTool.run`` returned (a
``ToolMessage``, a ``Command`` or the raw result), and an error it raised is recorded too, so
that a replay shows the model the same error.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
    message_chunk_to_message,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.prompt_values import ChatPromptValue, PromptValue, StringPromptValue
from langchain_core.runnables.config import get_config_list
from langchain_core.tools import BaseTool
from pydantic import BaseModel

from agentledger import Codec, RunSession, StepCall, StepKind, StepStart

from ._lg_scope import TaskScope, active, node_attempt

__all__ = ["BATCH_KEY", "abatch", "arun_live", "batch", "model_ainvoke", "model_astream",
           "model_invoke", "model_stream", "normalise_messages", "prepare_codec",
           "run_live", "tool_arun", "tool_run"]

# Config metadata that tells a model call its place in a batch.
BATCH_KEY = "agentledger_batch"

_MESSAGE_TYPES: tuple[type[BaseMessage], ...] = (
    AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage, ChatMessage,
    FunctionMessage, RemoveMessage,
)
_prepared: weakref.WeakSet[Codec] = weakref.WeakSet()
_LLM, _TOOL = str(StepKind.LLM), str(StepKind.TOOL)
_field_names: weakref.WeakKeyDictionary[type, frozenset[str]] = weakref.WeakKeyDictionary()


def prepare_codec(codec: Codec) -> None:
    """Allow LangChain messages and LangGraph's Command/Send as recorded values."""
    if codec in _prepared:
        return
    for cls in _MESSAGE_TYPES:
        if not codec.knows(cls):
            codec.register_pydantic(cls, f"langchain.{cls.__name__}")
    from langgraph.types import Command, Send

    if not codec.knows(Send):
        codec.register(Send, "langgraph.Send", lambda s: {"node": s.node, "arg": s.arg},
                       lambda d: Send(d["node"], d["arg"]))
    if not codec.knows(Command):
        codec.register(Command, "langgraph.Command",
                       lambda c: {"graph": c.graph, "update": c.update, "resume": c.resume,
                                  "goto": list(c.goto) if isinstance(c.goto, tuple) else c.goto},
                       lambda d: Command(**d))
    _prepared.add(codec)


# ---- inputs -------------------------------------------------------------------------------
def normalise_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """Messages as the fingerprint sees them: no ids, no response metadata, no timestamps."""
    out = []
    for m in messages:
        item: dict[str, Any] = {"type": m.type, "content": m.content}
        if m.name:
            item["name"] = m.name
        if isinstance(m, AIMessage) and m.tool_calls:
            item["tool_calls"] = [{"name": c["name"], "args": c["args"], "id": c.get("id")}
                                  for c in m.tool_calls]
        if isinstance(m, ToolMessage):
            item["tool_call_id"] = m.tool_call_id
            item["status"] = m.status
        out.append(item)
    return out


def _prompt_messages(prompt: PromptValue) -> list[dict[str, Any]]:
    if type(prompt) is StringPromptValue:  # to_messages() would build a HumanMessage for it
        return [{"type": "human", "content": prompt.text}]
    return normalise_messages(prompt.to_messages())


def _model_name(model: BaseChatModel) -> str:
    return type(model).__name__


def _to_prompt(input: Any) -> PromptValue:
    # What BaseChatModel does with its input, from public parts (its _convert_input is private).
    if isinstance(input, PromptValue):
        return input
    if isinstance(input, str):
        return StringPromptValue(text=input)
    if isinstance(input, Sequence):
        return ChatPromptValue(messages=convert_to_messages(input))
    raise ValueError(f"Invalid input type {type(input)}. "
                     "Must be a PromptValue, str, or list of BaseMessages.")


def _model_step(model: BaseChatModel, task: TaskScope, session: RunSession, input: Any,
                stop: list[str] | None, config: Any) -> tuple[StepCall, PromptValue]:
    """The step of a model call, and its input converted once: the original call is given the
    ``PromptValue``, which its own conversion passes through unchanged."""
    prompt = _to_prompt(input)
    task = _in_batch(task, config)
    name = _model_name(model)
    inputs: dict[str, Any] = {"messages": _prompt_messages(prompt)}
    if stop:
        inputs["stop"] = list(stop)
    call_id = task.next_id(session, _LLM, name, node_attempt())
    return StepCall(kind=StepKind.LLM, name=name, inputs=inputs, scope=task.scope,
                    call_id=call_id, intent=False), prompt


def _tool_args(tool: BaseTool, tool_input: Any) -> Any:
    """The arguments the model chose, without those LangGraph injects (state, runtime)."""
    if not isinstance(tool_input, dict):
        return tool_input
    schema = tool.tool_call_schema
    names: frozenset[str] | None
    if isinstance(schema, dict):
        names = frozenset(schema.get("properties", {}))
    elif isinstance(schema, type) and issubclass(schema, BaseModel):
        # LangChain memoizes the schema class per tool; its field names, per class.
        names = _field_names.get(schema)
        if names is None:
            names = _field_names[schema] = frozenset(schema.model_fields)
    else:
        return tool_input
    return {k: v for k, v in tool_input.items() if k in names}


def _tool_step(tool: BaseTool, task: TaskScope, session: RunSession, tool_input: Any,
               tool_call_id: str | None) -> StepCall:
    call_id = task.next_id(session, _TOOL, tool.name, node_attempt(),
                           call_id=tool_call_id)
    return StepCall(kind=StepKind.TOOL, name=tool.name,
                    inputs={"args": _tool_args(tool, tool_input)}, scope=task.scope,
                    call_id=call_id)


# ---- the protocol around one call ---------------------------------------------------------
def run_live(session: RunSession, start: StepStart, fn: Callable[[], Any],
              record_errors: bool) -> Any:
    token = session.enter_step(start)  # session.executing(start), without its generator
    try:
        try:
            value = fn()
        finally:
            session.exit_step(token)
    except Exception as e:
        if record_errors:
            session.record(start, error=e)
        raise
    session.record(start, value)
    return value



async def arun_live(session: RunSession, start: StepStart, fn: Callable[[], Awaitable[Any]],
                     record_errors: bool) -> Any:
    token = session.enter_step(start)
    try:
        try:
            value = await fn()
        finally:
            session.exit_step(token)
    except Exception as e:
        if record_errors:
            await session.arecord(start, error=e)
        raise
    await session.arecord(start, value)
    return value


def _as_chunk(message: Any) -> Any:
    """A recorded model answer as the single chunk a replayed stream yields."""
    if not isinstance(message, AIMessage) or isinstance(message, AIMessageChunk):
        return message
    chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c.get("id"),
                              index=i) for i, c in enumerate(message.tool_calls)]
    return AIMessageChunk(content=message.content, id=message.id,
                          additional_kwargs=message.additional_kwargs,
                          response_metadata=message.response_metadata,
                          usage_metadata=message.usage_metadata, name=message.name,
                          tool_call_chunks=chunks, chunk_position="last")


def _joined(chunks: list[Any]) -> Any:
    if not chunks:
        return AIMessage(content="")
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return message_chunk_to_message(total) if isinstance(total, BaseMessage) else total


# ---- the wrapped entry points (installed by _recording) ----------------------------------
def model_invoke(original: Callable[..., Any]) -> Callable[..., Any]:
    def invoke(self: BaseChatModel, input: Any, config: Any = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Any:
        found = active()
        if found is None:
            return original(self, input, config, stop=stop, **kwargs)
        session, task = found
        call, prompt = _model_step(self, task, session, input, stop, config)
        start = session.begin(call)
        if start.replayed:
            return session.result(start)
        return run_live(session, start,
                        lambda: original(self, prompt, config, stop=stop, **kwargs), False)

    return invoke


def model_ainvoke(original: Callable[..., Any]) -> Callable[..., Any]:
    async def ainvoke(self: BaseChatModel, input: Any, config: Any = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> Any:
        found = active()
        if found is None:
            return await original(self, input, config, stop=stop, **kwargs)
        session, task = found
        call, prompt = _model_step(self, task, session, input, stop, config)
        start = await session.abegin(call)
        if start.replayed:
            return session.result(start)
        return await arun_live(
            session, start, lambda: original(self, prompt, config, stop=stop, **kwargs), False)

    return ainvoke


def model_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    def stream(self: BaseChatModel, input: Any, config: Any = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[Any]:
        found = active()
        if found is None:
            yield from original(self, input, config, stop=stop, **kwargs)
            return
        session, task = found
        call, prompt = _model_step(self, task, session, input, stop, config)
        start = session.begin(call)
        if start.replayed:
            yield _as_chunk(session.result(start))
            return
        chunks: list[Any] = []
        it = original(self, prompt, config, stop=stop, **kwargs)
        while True:
            # The step is current only while the model produces a chunk: between chunks
            # the consumer runs, and its own calls are not part of this one.
            try:
                with session.executing(start):
                    chunk = next(it)
            except StopIteration:
                break
            chunks.append(chunk)
            yield chunk
        session.record(start, _joined(chunks))

    return stream


def model_astream(original: Callable[..., Any]) -> Callable[..., Any]:
    async def astream(self: BaseChatModel, input: Any, config: Any = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        found = active()
        if found is None:
            async for chunk in original(self, input, config, stop=stop, **kwargs):
                yield chunk
            return
        session, task = found
        call, prompt = _model_step(self, task, session, input, stop, config)
        start = await session.abegin(call)
        if start.replayed:
            yield _as_chunk(session.result(start))
            return
        chunks: list[Any] = []
        it = original(self, prompt, config, stop=stop, **kwargs).__aiter__()
        while True:
            try:
                with session.executing(start):
                    chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            chunks.append(chunk)
            yield chunk
        await session.arecord(start, _joined(chunks))

    return astream


def batch(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A wrapper of ``batch`` for chat models (kind 'llm') or tools (kind 'tool'): each input
    is told its place in the batch, because the batch runs them in parallel, in no fixed
    order."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def batch(self: Any, inputs: list[Any], config: Any = None, **kwargs: Any) -> Any:
            found = active()
            if found is None or not inputs:
                return original(self, inputs, config, **kwargs)
            configs = _batch_configs(_name(self, kind), found, config, len(inputs))
            return original(self, inputs, configs, **kwargs)

        return batch

    return wrap


def abatch(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        async def abatch(self: Any, inputs: list[Any], config: Any = None, **kwargs: Any
                         ) -> Any:
            found = active()
            if found is None or not inputs:
                return await original(self, inputs, config, **kwargs)
            configs = _batch_configs(_name(self, kind), found, config, len(inputs))
            return await original(self, inputs, configs, **kwargs)

        return abatch

    return wrap


def _name(runnable: Any, kind: str) -> str:
    return _model_name(runnable) if kind == "llm" else str(runnable.name)


def _batch_configs(name: str, found: tuple[RunSession, TaskScope], config: Any,
                   n: int) -> list[Any]:
    session, task = found
    batch_id = task.next_id(session, "batch", name, node_attempt())
    return [{**c, "metadata": {**(c.get("metadata") or {}), BATCH_KEY: f"{batch_id}.{i}"}}
            for i, c in enumerate(get_config_list(config, n))]


def _in_batch(task: TaskScope, config: Any) -> TaskScope:
    """The scope of one input of a batch (its place in the batch), or the task's own."""
    metadata = config.get("metadata") if isinstance(config, dict) else None
    tag = metadata.get(BATCH_KEY) if isinstance(metadata, dict) else None
    if tag is None:
        return task
    return TaskScope(scope=f"{task.scope}/batch{tag}", attempt=node_attempt())


def tool_run(original: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: BaseTool, tool_input: Any, *args: Any, tool_call_id: str | None = None,
            **kwargs: Any) -> Any:
        found = active()
        if found is None:
            return original(self, tool_input, *args, tool_call_id=tool_call_id, **kwargs)
        session, task = found
        task = _in_batch(task, kwargs.get("config"))
        start = session.begin(_tool_step(self, task, session, tool_input, tool_call_id))
        if start.replayed:
            return session.result(start)
        return run_live(session, start, lambda: original(
            self, tool_input, *args, tool_call_id=tool_call_id, **kwargs), True)

    return run


def tool_arun(original: Callable[..., Any]) -> Callable[..., Any]:
    async def arun(self: BaseTool, tool_input: Any, *args: Any,
                   tool_call_id: str | None = None, **kwargs: Any) -> Any:
        found = active()
        if found is None:
            return await original(self, tool_input, *args, tool_call_id=tool_call_id,
                                  **kwargs)
        session, task = found
        task = _in_batch(task, kwargs.get("config"))
        start = await session.abegin(_tool_step(self, task, session, tool_input,
                                                tool_call_id))
        if start.replayed:
            return session.result(start)
        return await arun_live(session, start, lambda: original(
            self, tool_input, *args, tool_call_id=tool_call_id, **kwargs), True)

    return arun
