"""``DurableLLM``: a ``BaseLLM`` proxy that makes each LLM call of a crew a durable step.

CrewAI has no hook that can replace an LLM call, so each agent's LLM is swapped for this
proxy while a handler is attached. Outside an agentledger run it simply forwards. Inside one,
a call whose outcome is recorded returns the recorded value; any other call goes to the real
LLM and its outcome is recorded before CrewAI sees it (one round trip: an LLM call has no side
effect to guard, so it records no intent).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pydantic import BaseModel, PrivateAttr

import agentledger
from agentledger import LedgerError, RunSession, StepCall, StepKind
from crewai.llms.base_llm import BaseLLM, call_stop_override, call_stream_override
from crewai.utilities.agent_utils import extract_tool_call_info, is_tool_call_list

from ._abort import LedgerAbort

__all__ = ["DurableLLM", "messages_digest", "tool_call_dicts"]

# Fields copied from the real LLM so that CrewAI's reads of the proxy (stop words, model
# name, provider, streaming) see what they would have seen on the real one.
_MIRRORED = tuple(name for name in BaseLLM.model_fields if name != "llm_type")


def _opaque(value: Any) -> str:
    # Objects without a JSON form count by type only: their repr may hold an address.
    return f"<{type(value).__name__}>"


def messages_digest(messages: Any) -> str:
    """A digest of the conversation, for the fingerprint. Hashing the canonical JSON here
    costs a third of handing the whole conversation to the codec, and the step record stays
    small however long the conversation grows (its preview is the last message)."""
    text = json.dumps(messages, default=_opaque, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def tool_call_dicts(answer: list[Any]) -> list[dict[str, Any]]:
    """Provider tool-call objects as OpenAI-style dicts, which CrewAI's executor reads like
    the objects themselves and the ledger can record and return with the same type."""
    out: list[dict[str, Any]] = []
    for item in answer:
        info = extract_tool_call_info(item)
        if info is None:
            raise TypeError(f"unrecognised tool call {type(item).__name__} in an LLM answer")
        call_id, name, args = info
        text = args if isinstance(args, str) else json.dumps(args, sort_keys=True)
        out.append({"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": text}})
    return out


class DurableLLM(BaseLLM):
    """Proxy around a crew's real LLM; built by ``DurableCrewHandler.attach``."""

    llm_type: str = "agentledger"
    _inner: BaseLLM = PrivateAttr()
    _label: str = PrivateAttr(default="llm")

    @classmethod
    def wrap(cls, inner: BaseLLM, label: str) -> DurableLLM:
        proxy = cls.model_construct(**{name: getattr(inner, name) for name in _MIRRORED
                                       if hasattr(inner, name)})
        proxy._inner = inner
        proxy._label = label
        return proxy

    @property
    def inner(self) -> BaseLLM:
        return self._inner

    # ---- what CrewAI asks the LLM about itself --------------------------------------------
    def supports_function_calling(self) -> bool:
        # Not part of BaseLLM: CrewAI takes a missing method to mean "no".
        check = getattr(self._inner, "supports_function_calling", None)
        return bool(check()) if callable(check) else False

    def supports_stop_words(self) -> bool:
        return bool(self._inner.supports_stop_words())

    def get_context_window_size(self) -> int:
        return int(self._inner.get_context_window_size())

    def supports_multimodal(self) -> bool:
        return bool(self._inner.supports_multimodal())

    def get_token_usage_summary(self) -> Any:
        return self._inner.get_token_usage_summary()

    def __getattr__(self, name: str) -> Any:
        # Provider-specific attributes of the real LLM (api, client settings...).
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            if name.startswith("__") or name == "_inner":
                raise
            private = object.__getattribute__(self, "__pydantic_private__") or {}
            inner = private.get("_inner")
            if inner is None:
                raise
            return getattr(inner, name)

    # ---- calls ----------------------------------------------------------------------------
    def _step(self, session: RunSession, messages: Any, tools: Any,
              response_model: type[BaseModel] | None) -> StepCall:
        if response_model is not None and not session.codec.knows(response_model):
            session.codec.register_pydantic(response_model)
        names = sorted(str(t.get("function", t).get("name", "")) if isinstance(t, dict) else
                       type(t).__name__ for t in tools or [])
        inputs = {"messages": messages_digest(messages),
                  "turns": 1 if isinstance(messages, str) else len(messages), "tools": names,
                  "response_model": None if response_model is None else
                  f"{response_model.__module__}.{response_model.__qualname__}"}
        last = messages if isinstance(messages, str) else (
            str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict)
            else "")
        return StepCall(kind=StepKind.LLM, name=self._label, inputs=inputs, intent=False,
                        preview=last[-160:])

    @contextmanager
    def _call_settings(self) -> Iterator[None]:
        # CrewAI sets per-call stop words and streaming on the LLM it holds (the proxy),
        # keyed by object id; hand them to the real LLM for the call.
        stop = self.stop_sequences
        stream = self._effective_stream()
        with ExitStack() as stack:
            stack.enter_context(call_stop_override(
                self._inner, list(stop) if stop != self._inner.stop else None))
            if stream is not None and stream != self._inner.stream:
                stack.enter_context(call_stream_override(self._inner, stream))
            yield

    @staticmethod
    def _normalise(answer: Any) -> Any:
        if isinstance(answer, list) and answer and is_tool_call_list(answer):
            return tool_call_dicts(answer)
        return answer

    def _durable_functions(self, session: RunSession, functions: dict[str, Any] | None
                           ) -> dict[str, Any] | None:
        # Some providers run the tools themselves when handed ``available_functions``:
        # each such run is a tool step of its own.
        if not functions:
            return functions

        def durable(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def run(**kwargs: Any) -> Any:
                return session.call(StepCall(kind=StepKind.TOOL, name=name, inputs=kwargs),
                                    fn, **kwargs)
            return run

        return {name: durable(name, fn) for name, fn in functions.items()}

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: dict[str, Any] | None = None, from_task: Any = None,
             from_agent: Any = None, response_model: type[BaseModel] | None = None) -> Any:
        session = agentledger.current_run()
        if session is None:
            with self._call_settings():
                return self._inner.call(messages, tools, callbacks, available_functions,
                                        from_task, from_agent, response_model)
        try:
            start = session.begin(self._step(session, messages, tools, response_model))
        except LedgerError as e:
            raise LedgerAbort(e) from e
        if start.replayed:
            return session.result(start)
        functions = self._durable_functions(session, available_functions)
        try:
            with self._call_settings():
                answer = self._normalise(self._inner.call(
                    messages, tools, callbacks, functions, from_task, from_agent,
                    response_model))
        except Exception as e:
            self._record(session, start, error=e)
            raise
        self._record(session, start, answer)
        return answer

    async def acall(self, messages: Any, tools: Any = None, callbacks: Any = None,
                    available_functions: dict[str, Any] | None = None, from_task: Any = None,
                    from_agent: Any = None, response_model: type[BaseModel] | None = None
                    ) -> Any:
        session = agentledger.current_run()
        if session is None:
            with self._call_settings():
                return await self._inner.acall(messages, tools, callbacks, available_functions,
                                               from_task, from_agent, response_model)
        try:
            start = await session.abegin(self._step(session, messages, tools, response_model))
        except LedgerError as e:
            raise LedgerAbort(e) from e
        if start.replayed:
            return session.result(start)
        functions = self._durable_functions(session, available_functions)
        try:
            with self._call_settings():
                answer = self._normalise(await self._inner.acall(
                    messages, tools, callbacks, functions, from_task, from_agent,
                    response_model))
        except Exception as e:
            await self._arecord(session, start, error=e)
            raise
        await self._arecord(session, start, answer)
        return answer

    @staticmethod
    def _record(session: RunSession, start: Any, value: Any = None,
                error: BaseException | None = None) -> None:
        try:
            session.record(start, value, error=error)
        except LedgerError as e:
            raise LedgerAbort(e) from e

    @staticmethod
    async def _arecord(session: RunSession, start: Any, value: Any = None,
                       error: BaseException | None = None) -> None:
        try:
            await session.arecord(start, value, error=error)
        except LedgerError as e:
            raise LedgerAbort(e) from e

    # BaseLLM wraps subclass call methods in its rate-limit retry; the real LLM already
    # retries, and a replayed call must not be retried at all.
    call._crewai_rate_limit_wrapped = True  # type: ignore[attr-defined]
    acall._crewai_rate_limit_wrapped = True  # type: ignore[attr-defined]
