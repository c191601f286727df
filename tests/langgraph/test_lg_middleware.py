"""``DurableMiddleware`` with ``create_agent``: durable model and tool calls through the
supported middleware API, never recorded twice together with the checkpointer's recording."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.checkpoint.memory import InMemorySaver

from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer, DurableMiddleware

sys.path.insert(0, str(Path(__file__).parent / "children"))
import lg_pipeline as pipeline

# create_agent may copy the model it is given: count on the class, reset by each test.
MODEL_CALLS: list[int] = []


class CountingChat(pipeline.ScriptedChat):
    def answer(self, messages: list[BaseMessage]) -> AIMessage:
        MODEL_CALLS.append(1)
        return super().answer(messages)


@pytest.fixture(autouse=True)
def counter() -> list[int]:
    MODEL_CALLS.clear()
    return MODEL_CALLS


@pytest.fixture
def effects(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "effects"
    monkeypatch.setenv("LG_EFFECTS", str(path))
    return path


def _agent(counter: list[int], checkpointer: Any, middleware: bool) -> Any:
    assert counter is MODEL_CALLS
    return create_agent(CountingChat(), [pipeline.send_email, pipeline.lookup],
                        middleware=[DurableMiddleware()] if middleware else [],
                        checkpointer=checkpointer)


INPUT = {"messages": [("user", "notify the team")]}


@pytest.mark.parametrize("middleware", [False, True])
def test_lg_create_agent_calls_are_recorded_once(ledger: Ledger, effects: Path,
                                                 middleware: bool, counter: list[int]) -> None:
    agent = _agent(counter, DurableCheckpointer(ledger), middleware)
    out = agent.invoke(INPUT, {"configurable": {"thread_id": "agent"}})
    assert out["messages"][-1].content == "done after 3 tool results"
    steps = ledger.steps("agent")
    kinds = sorted(str(s.kind) for s in steps)
    assert kinds == ["llm", "llm", "llm", "tool", "tool", "tool"], [s.key for s in steps]
    assert len({s.key for s in steps}) == 6
    tools = sorted(s.key.rsplit("@", 1)[1] for s in steps if s.kind == "tool")
    assert tools == ["call_lookup_1", "call_mail_ann", "call_mail_bob"]
    # What was recorded says who recorded it: the middleware stores ModelResponse.
    outcomes = " ".join(s.outcome or "" for s in steps if s.kind == "llm")
    assert ("langchain.ModelResponse" in outcomes) is middleware
    assert len(counter) == 3 and len(effects.read_text().splitlines()) == 3


async def test_lg_middleware_async_replays_inside_a_failed_node(
        ledger: Ledger, effects: Path, counter: list[int]) -> None:
    from langgraph.graph import START, StateGraph
    from typing_extensions import TypedDict

    agent = _agent(counter, None, True)
    flag: list[bool] = []

    class Outer(TypedDict):
        answer: str

    async def run_agent(state: Outer) -> dict[str, Any]:
        out = await agent.ainvoke(INPUT)
        if not flag:
            flag.append(True)
            raise RuntimeError("dies after the agent's calls")
        return {"answer": out["messages"][-1].content}

    g = StateGraph(Outer)
    g.add_node("run_agent", run_agent)
    g.add_edge(START, "run_agent")
    graph = g.compile(checkpointer=DurableCheckpointer(ledger))
    config = {"configurable": {"thread_id": "outer"}}
    with pytest.raises(RuntimeError):
        await graph.ainvoke({"answer": ""}, config)
    assert len(counter) == 3
    out = await graph.ainvoke(None, config)
    assert out["answer"] == "done after 3 tool results"
    assert len(counter) == 3, "a recorded model call ran again"
    assert len(effects.read_text().splitlines()) == 3
    assert len(ledger.steps("outer")) == 6


def test_lg_middleware_records_into_a_run_of_the_users_own(ledger: Ledger, effects: Path,
                                                          counter: list[int]) -> None:
    with ledger.run("own-run"):
        _agent(counter, InMemorySaver(), True).invoke(
            INPUT, {"configurable": {"thread_id": "t"}})
    assert len(ledger.steps("own-run")) == 6
    # A second go at the same run (a fresh graph after a crash): everything replays.
    with ledger.run("own-run"):
        out = _agent(counter, InMemorySaver(), True).invoke(
            INPUT, {"configurable": {"thread_id": "t"}})
    assert out["messages"][-1].content == "done after 3 tool results"
    assert len(counter) == 3 and len(effects.read_text().splitlines()) == 3


def test_lg_middleware_without_a_run_changes_nothing(ledger: Ledger, effects: Path,
                                                     counter: list[int]) -> None:
    agent = _agent(counter, InMemorySaver(), True)
    for _ in range(2):
        out = agent.invoke(INPUT, {"configurable": {"thread_id": f"free-{len(counter)}"}})
        assert out["messages"][-1].content == "done after 3 tool results"
    assert len(counter) == 6 and len(effects.read_text().splitlines()) == 6
    assert ledger.list_runs() == []
