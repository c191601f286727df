"""The graph of issue 14, for the resume-window tests.

research (a model call, two direct tool calls, an ``@agentledger.step``) -> writer (a model
whose tool calls ToolNode runs in parallel, looping: two emails, then a charge) -> notify (one
tool call) -> END. Nodes are sync or async. The scripted model answers from its input (how many
tool results it has seen), so a replay that skips calls gets the same answers. Each side effect
appends ``name|argument|idempotency key`` to the file named by $LG_EFFECTS.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from lg_pipeline import ScriptedChat as PipelineChat
from lg_pipeline import State, effect, lookup

import agentledger


class ScriptedChat(PipelineChat):
    """research: a plan; writer: two emails, then a charge, then a final answer."""

    def answer(self, messages: list[BaseMessage]) -> AIMessage:
        last = str(messages[-1].content) if messages else ""
        seen = sum(isinstance(m, ToolMessage) for m in messages)
        if last.startswith("research:"):
            return AIMessage(content=f"plan for {last[9:].strip()}")
        if seen == 0:
            return AIMessage(content="", tool_calls=[
                {"name": "send_email", "args": {"to": to}, "id": f"call_mail_{to}"}
                for to in ("ann", "bob")])
        if seen == 2:
            return AIMessage(content="", tool_calls=[
                {"name": "charge", "args": {"cents": 4200}, "id": "call_charge_1"}])
        return AIMessage(content=f"wrote after {seen} tool results")


@tool
def send_email(to: str) -> str:
    """Send an email."""
    effect("send_email", to)
    return f"sent to {to}"


@tool
def charge(cents: int) -> str:
    """Charge the customer."""
    effect("charge", str(cents))
    return f"charged {cents}"


@tool
def notify(channel: str) -> str:
    """Notify a channel."""
    effect("notify", channel)
    return f"notified {channel}"


@agentledger.step
def reserve(what: str) -> str:
    effect("reserve", what)
    return f"reserved {what}"


@agentledger.step
async def areserve(what: str) -> str:
    effect("reserve", what)
    return f"reserved {what}"


def build(checkpointer: Any, *, use_async: bool) -> Any:
    planner = ScriptedChat()
    writer_model = ScriptedChat().bind_tools([send_email, charge])

    def research(state: State) -> dict[str, Any]:
        plan = planner.invoke([("user", "research: the order")])
        found = [lookup.invoke({"q": "price"}), lookup.invoke({"q": "stock"})]
        return {"messages": [plan], "notes": [*found, reserve("budget")]}

    async def aresearch(state: State) -> dict[str, Any]:
        plan = await planner.ainvoke([("user", "research: the order")])
        found = [await lookup.ainvoke({"q": "price"}), await lookup.ainvoke({"q": "stock"})]
        return {"messages": [plan], "notes": [*found, await areserve("budget")]}

    def writer(state: State) -> dict[str, Any]:
        return {"messages": [writer_model.invoke(state["messages"])]}

    async def awriter(state: State) -> dict[str, Any]:
        return {"messages": [await writer_model.ainvoke(state["messages"])]}

    def notify_node(state: State) -> dict[str, Any]:
        return {"notes": [notify.invoke({"channel": "ops"})]}

    async def anotify_node(state: State) -> dict[str, Any]:
        return {"notes": [await notify.ainvoke({"channel": "ops"})]}

    def route(state: State) -> str:
        return "tools" if tools_condition(state) == "tools" else "notify"

    g = StateGraph(State)
    g.add_node("research", aresearch if use_async else research)
    g.add_node("writer", awriter if use_async else writer)
    g.add_node("tools", ToolNode([send_email, charge]))
    g.add_node("notify", anotify_node if use_async else notify_node)
    g.add_edge(START, "research")
    g.add_edge("research", "writer")
    g.add_conditional_edges("writer", route, ["tools", "notify"])
    g.add_edge("tools", "writer")
    g.add_edge("notify", END)
    return g.compile(checkpointer=checkpointer)


INPUTS: dict[str, Any] = {"messages": [("user", "process order 42")], "notes": []}
EFFECTS = ["charge|4200", "lookup|price", "lookup|stock", "notify|ops", "reserve|budget",
           "send_email|ann", "send_email|bob"]


def plain_state(values: dict[str, Any]) -> dict[str, Any]:
    """The state without message ids (LangGraph gives messages fresh ids on each run)."""
    msgs = []
    for m in values.get("messages", []):
        item: dict[str, Any] = {"type": m.type, "content": m.content}
        if isinstance(m, AIMessage):
            item["tool_calls"] = [(c["name"], c["args"], c["id"]) for c in m.tool_calls]
        if isinstance(m, ToolMessage):
            item["tool_call_id"] = m.tool_call_id
        msgs.append(item)
    return {"messages": msgs, "notes": list(values.get("notes", []))}
