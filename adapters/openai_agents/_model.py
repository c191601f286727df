"""``DurableModel``: a ``Model`` whose calls are durable steps of the active run.

A model call has no side effect to guard, so it records only its outcome (one round trip):
a crash before that record simply asks the model again. Its step key is the agent's name and
its occurrence in the scope, so parallel nested runs (agents as tools, guardrail agents) that
run under other scopes or other names never race for a number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.model_settings import ModelSettings
from agents.models.interface import Model, ModelTracing
from agents.tool import Tool
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

import agentledger
from agentledger import RunSession, StepCall, StepKind, StepStart, restart_numbering

from ._types import dump_item

__all__ = ["DurableModel", "model_scope"]

# Set while a DurableRunner resumes after an approval: the resumed run's model calls count
# again from one, so they get a scope of their own ("r<round>").
model_scope: ContextVar[str | None] = ContextVar("agentledger_oa_model_scope", default=None)


# The canonical text of a model call's question, made by one encoder for every call
# (json.dumps builds a new one each time). No circular check: the input is JSON data
# (model_dump output and the SDK's dict items), and a cycle still fails, as RecursionError.
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              default=str, check_circular=False).encode


def _normalised_input(input: str | list[TResponseInputItem]) -> Any:
    if isinstance(input, str):
        return input
    out: list[Any] = []
    append = out.append
    for item in input:
        # Most items are already dicts (the SDK's input items); only models are dumped.
        data: Any = item if type(item) is dict else dump_item(item)
        if isinstance(data, dict) and "id" in data:
            data = {k: v for k, v in data.items() if k != "id"}  # ids are not the question
        append(data)
    return out


def _schema_name(schema: AgentOutputSchemaBase | None) -> str | None:
    return None if schema is None else schema.name()


class DurableModel(Model):
    """Wraps the model an agent resolved to, for the agent ``agent_name``."""

    def __init__(self, inner: Model, agent_name: str) -> None:
        self.inner = inner
        self.agent_name = agent_name
        # The step key of a call that failed: the SDK retries a request on the model it got
        # for the turn (this object), and the retry must take the same key, or a restarted
        # run would ask the model again under the first key and get another answer.
        self._failed: StepStart | None = None

    def __getattr__(self, name: str) -> Any:
        # What the SDK probes a model for beyond the Model interface (a capability such as
        # ``_supports_default_prompt_cache_key``, the model's name) is the wrapped model's.
        if name == "inner":  # not set yet (copy, unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _call(self, system_instructions: str | None, input: str | list[TResponseInputItem],
              tools: list[Tool], output_schema: AgentOutputSchemaBase | None,
              handoffs: list[Handoff], streamed: bool) -> StepCall:
        items = _normalised_input(input)
        question = {"instructions": system_instructions, "input": items,
                    "tools": sorted(t.name for t in tools),
                    "handoffs": sorted(h.tool_name for h in handoffs),
                    "output": _schema_name(output_schema)}
        # The conversation grows every turn: digest it here with the C JSON encoder, and hand
        # the ledger only the digest to fingerprint, instead of walking every item in Python.
        text = _canonical(question)
        count = len(items) if isinstance(items, list) else 1
        digest = hashlib.sha256(text.encode()).hexdigest()
        inputs = {"sha256": digest, "items": count}
        extra = model_scope.get()
        scope = None
        if extra is not None:
            outer = agentledger.current_scope()
            scope = f"{outer}/{extra}" if outer else extra
        name = f"{self.agent_name}:stream" if streamed else self.agent_name
        return StepCall(kind=StepKind.LLM, name=name, inputs=inputs, scope=scope, intent=False,
                        preview=f"{self.agent_name}: {count} input item(s), {digest[:12]}")

    async def _begin(self, session: RunSession, call: StepCall) -> StepStart:
        failed = self._failed
        # Only the same question again is a retry of the failed call.
        scope = call.scope if call.scope is not None else agentledger.current_scope()
        if failed is None or failed.call is None or (
                (failed.call.name, failed.call.inputs, failed.scope)
                != (call.name, call.inputs, scope)):
            return await session.abegin(call)
        with _numbered_as(session, call, failed.key):
            return await session.abegin(call)

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        session = agentledger.current_run()
        if session is None:
            return await self.inner.get_response(
                system_instructions, input, model_settings, tools, output_schema, handoffs,
                tracing, previous_response_id=previous_response_id,
                conversation_id=conversation_id, prompt=prompt)
        start = await self._begin(session, self._call(system_instructions, input, tools,
                                                      output_schema, handoffs, streamed=False))
        if start.replayed:
            value = session.result(start)
            if not isinstance(value, ModelResponse):
                raise TypeError(f"step {start.key!r} holds a {type(value).__name__}, "
                                "not a model response")
            return value
        # A failed model call is not recorded: it had no effect, the restart asks again.
        try:
            response = await self.inner.get_response(
                system_instructions, input, model_settings, tools, output_schema, handoffs,
                tracing, previous_response_id=previous_response_id,
                conversation_id=conversation_id, prompt=prompt)
        except Exception:
            self._failed = start
            raise
        self._failed = None
        await session.arecord(start, response)
        return response

    def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        live = self.inner.stream_response(
            system_instructions, input, model_settings, tools, output_schema, handoffs, tracing,
            previous_response_id=previous_response_id, conversation_id=conversation_id,
            prompt=prompt)
        session = agentledger.current_run()
        if session is None:
            return live
        call = self._call(system_instructions, input, tools, output_schema, handoffs,
                          streamed=True)
        return self._stream(session, call, live)

    async def _stream(self, session: RunSession, call: StepCall,
                      live: AsyncIterator[TResponseStreamEvent]
                      ) -> AsyncIterator[TResponseStreamEvent]:
        # The inner stream is closed here, in the task that reads this one, however it ends:
        # the runner stops reading at a failure event, and a generator left suspended would
        # be closed later by the event loop, in another task.
        try:
            start = await self._begin(session, call)
            if start.replayed:
                response = session.result(start)
                if not isinstance(response, Response):
                    raise TypeError(f"step {start.key!r} holds a {type(response).__name__}, "
                                    "not a streamed response")
                await _close(live)
                for event in _replay_events(response):
                    yield event
                return
            recorded = False
            try:
                async for event in live:
                    if isinstance(event, ResponseCompletedEvent):
                        # Recorded before the runner sees the final response, so no tool of
                        # this turn can start before the record exists.
                        await session.arecord(start, event.response)
                        recorded = True
                        self._failed = None
                    yield event
            except Exception:
                if not recorded:
                    self._failed = start
                raise
        finally:
            await _close(live)

    async def close(self) -> None:
        await self.inner.close()

    async def _cleanup_on_run_end(self, owner: object) -> None:
        # The SDK tells each model it resolved that its run ended (websocket models close
        # their connection then); the wrapped model must hear it.
        await self.inner._cleanup_on_run_end(owner)

    def get_retry_advice(self, request: Any) -> Any:
        return self.inner.get_retry_advice(request)


@contextmanager
def _numbered_as(session: RunSession, call: StepCall, key: str) -> Iterator[None]:
    """Number ``call`` so that it takes ``key`` (``<base>#<n>`` or ``<base>#<n>.r<attempt>``),
    the key an earlier attempt of the same request took: restart the numbering at that
    attempt and count the first n-1 occurrences off again."""
    tail = key.rpartition("#")[2]
    number, _, attempt = tail.partition(".r")
    with restart_numbering(int(attempt) if attempt else 1):
        for _ in range(int(number) - 1):
            session.step_key(call)
        yield


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _replay_events(response: Response) -> list[TResponseStreamEvent]:
    """A recorded streamed response as item-level events: each output item added and done,
    then the completed response (token deltas are not recorded)."""
    events: list[TResponseStreamEvent] = []
    seq = 0
    for index, item in enumerate(response.output):
        events.append(ResponseOutputItemAddedEvent(item=item, output_index=index,
                                                   sequence_number=seq,
                                                   type="response.output_item.added"))
        events.append(ResponseOutputItemDoneEvent(item=item, output_index=index,
                                                  sequence_number=seq + 1,
                                                  type="response.output_item.done"))
        seq += 2
    events.append(ResponseCompletedEvent(response=response, sequence_number=seq,
                                         type="response.completed"))
    return events
