"""A graph of eleven calls for the LangGraph call-recording tests and the crash matrix.

plan (model: two parallel send_email calls) -> tools (ToolNode, parallel) -> agent (model: one
lookup call) -> tools -> agent (model: final answer) -> finish (a direct send_email.invoke, an
@agentledger.step, model.stream, model.batch of two). Six model calls, four tool calls, one step.

The scripted model answers from its INPUT (how many tool results it has seen), never from a
cursor, so a replay that skips calls still gets the same answers. Tools append one line per
execution to the file named by $LG_EFFECTS: ``name|argument|idempotency key``.
"""

from __future__ import annotations

import operator
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

import agentledger


def effect(name: str, arg: str) -> None:
    path = os.environ.get("LG_EFFECTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{name}|{arg}|{agentledger.current_idempotency_key()}\n")


class ScriptedChat(BaseChatModel):
    """Answers from what it was asked: the number of tool results and the last human line."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(**kwargs)

    def answer(self, messages: list[BaseMessage]) -> AIMessage:
        seen = sum(isinstance(m, ToolMessage) for m in messages)
        last = str(messages[-1].content) if messages else ""
        usage = {"input_tokens": 10 * len(messages), "output_tokens": 5, "total_tokens":
                 10 * len(messages) + 5}
        if last.startswith("summarise:"):
            return AIMessage(content=f"summary of {last[10:]}", usage_metadata=usage)
        if seen == 0:
            calls = [{"name": "send_email", "args": {"to": to}, "id": f"call_mail_{to}"}
                     for to in ("ann", "bob")]
            return AIMessage(content="", tool_calls=calls, usage_metadata=usage)
        if seen == 2:
            return AIMessage(content="", tool_calls=[
                {"name": "lookup", "args": {"q": "price"}, "id": "call_lookup_1"}],
                usage_metadata=usage)
        return AIMessage(content=f"done after {seen} tool results", usage_metadata=usage)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                  ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.answer(messages))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                ) -> Iterator[ChatGenerationChunk]:
        text = str(self.answer(messages).content)
        for i in range(0, len(text), 4):
            yield ChatGenerationChunk(message=AIMessageChunk(content=text[i:i + 4]))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: Any = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages, stop):
            yield chunk


@tool
def send_email(to: str) -> str:
    """Send a notification email."""
    effect("send_email", to)
    return f"sent to {to}"


@tool
def lookup(q: str) -> str:
    """Look something up."""
    effect("lookup", q)
    return f"{q}=42"


@agentledger.step
def record_note(text: str) -> str:
    effect("record_note", text)
    return f"noted {text}"


@agentledger.step
async def arecord_note(text: str) -> str:
    effect("record_note", text)
    return f"noted {text}"


class State(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]
    notes: Annotated[list[str], operator.add]


def build(checkpointer: Any, *, use_async: bool = False) -> Any:
    model = ScriptedChat().bind_tools([send_email, lookup])
    raw = ScriptedChat()

    def agent(state: State) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def aagent(state: State) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def finish(state: State) -> dict[str, Any]:
        mail = send_email.invoke({"to": "boss"})
        note = record_note("finished")
        streamed = "".join(str(c.content) for c in raw.stream("summarise:report"))
        batch = raw.batch(["summarise:a", "summarise:b"])
        return {"notes": [mail, note, streamed, *[str(m.content) for m in batch]]}

    async def afinish(state: State) -> dict[str, Any]:
        mail = await send_email.ainvoke({"to": "boss"})
        note = await arecord_note("finished")
        streamed = "".join([str(c.content) async for c in raw.astream("summarise:report")])
        batch = await raw.abatch(["summarise:a", "summarise:b"])
        return {"notes": [mail, note, streamed, *[str(m.content) for m in batch]]}

    def route(state: State) -> str:
        return "tools" if tools_condition(state) == "tools" else "finish"

    g = StateGraph(State)
    g.add_node("plan", aagent if use_async else agent)
    g.add_node("agent", aagent if use_async else agent)
    g.add_node("tools", ToolNode([send_email, lookup]))
    g.add_node("finish", afinish if use_async else finish)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", route, ["tools", "finish"])
    g.add_edge("tools", "agent")
    g.add_conditional_edges("agent", route, ["tools", "finish"])
    g.add_edge("finish", END)
    return g.compile(checkpointer=checkpointer)


INPUTS = {"messages": [("user", "notify the team")], "notes": []}


def plain_state(values: dict[str, Any]) -> dict[str, Any]:
    """The state without message ids (LangGraph gives tool results fresh ids on each run)."""
    msgs = []
    for m in values.get("messages", []):
        item = {"type": m.type, "content": m.content}
        if isinstance(m, AIMessage):
            item["tool_calls"] = [(c["name"], c["args"], c["id"]) for c in m.tool_calls]
        if isinstance(m, ToolMessage):
            item["tool_call_id"] = m.tool_call_id
        msgs.append(item)
    return {"messages": msgs, "notes": list(values.get("notes", []))}


def run_to_end(graph: Any, config: dict[str, Any], *, durability: str) -> dict[str, Any]:
    """Start the thread, or resume it where it stopped (the restart after a crash).

    ``state.tasks``, not ``state.next``: with ``durability="async"`` the last saved checkpoint
    may be one whose tasks all saved their writes, so nothing is "next" though the graph has
    not ended; ``invoke(None)`` applies those writes and goes on."""
    state = graph.get_state(config)
    if state.tasks:
        return graph.invoke(None, config, durability=durability)
    if state.values:
        return state.values
    return graph.invoke(INPUTS, config, durability=durability)


async def arun_to_end(graph: Any, config: dict[str, Any], *, durability: str) -> dict[str, Any]:
    state = await graph.aget_state(config)
    if state.tasks:
        return await graph.ainvoke(None, config, durability=durability)
    if state.values:
        return state.values
    return await graph.ainvoke(INPUTS, config, durability=durability)


def build_functional(checkpointer: Any) -> Any:
    """The same eleven calls through the functional API: @task calls from an @entrypoint."""
    from langgraph.func import entrypoint, task

    model = ScriptedChat().bind_tools([send_email, lookup])
    raw = ScriptedChat()

    @task
    def think(messages: list[BaseMessage]) -> BaseMessage:
        return model.invoke(messages)

    @task
    def act(call: dict[str, Any]) -> ToolMessage:
        return send_email.invoke(call) if call["name"] == "send_email" else lookup.invoke(call)

    @task
    def finish() -> list[str]:
        mail = send_email.invoke({"to": "boss"})
        note = record_note("finished")
        streamed = "".join(str(c.content) for c in raw.stream("summarise:report"))
        batch = raw.batch(["summarise:a", "summarise:b"])
        return [mail, note, streamed, *[str(m.content) for m in batch]]

    @entrypoint(checkpointer=checkpointer)
    def flow(inputs: dict[str, Any]) -> dict[str, Any]:
        messages: list[BaseMessage] = list(
            add_messages([], inputs["messages"]))  # type: ignore[arg-type]
        while True:
            answer = think(messages).result()
            messages.append(answer)
            if not answer.tool_calls:
                break
            futures = [act({**c, "type": "tool_call"}) for c in answer.tool_calls]
            messages.extend(f.result() for f in futures)
        return {"messages": messages, "notes": finish().result()}

    return flow


def build_agent(checkpointer: Any) -> Any:
    """create_agent with DurableMiddleware: three model calls, three tool calls."""
    from langchain.agents import create_agent

    from agentledger.langgraph import DurableMiddleware

    return create_agent(ScriptedChat(), [send_email, lookup], middleware=[DurableMiddleware()],
                        checkpointer=checkpointer)
