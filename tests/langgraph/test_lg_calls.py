"""Calls inside nodes of a graph on a DurableCheckpointer are durable steps; a graph on any
other checkpointer is untouched.

A node that fails after its calls is run again by the next invocation (``invoke(None)`` resumes
the thread); every call it makes must then come back from its record, not from the model or
the tool.
"""

from __future__ import annotations

import operator
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import RetryPolicy, Send
from pydantic import BaseModel

import agentledger
from agentledger import Ledger, NonDeterminismError
from agentledger.langgraph import DurableCheckpointer

sys.path.insert(0, str(Path(__file__).parent / "children"))
import lg_pipeline as pipeline


class Calls:
    """Counts real executions (the fakes answer from their input; this only observes)."""

    def __init__(self) -> None:
        self.model = 0
        self.tool: list[str] = []


class CountingChat(pipeline.ScriptedChat):
    counter: Any = None

    def answer(self, messages: list[BaseMessage]) -> AIMessage:
        self.counter.model += 1
        last = str(messages[-1].content)
        if last.startswith("structure:"):
            return AIMessage(content="", tool_calls=[
                {"name": "Verdict", "args": {"ok": True, "why": last[10:]}, "id": "call_v"}])
        return super().answer(messages)


class Verdict(BaseModel):
    ok: bool
    why: str


class S(TypedDict):
    messages: Annotated[list[BaseMessage], operator.add]
    out: Annotated[list[Any], operator.add]


@pytest.fixture
def saver(ledger: Ledger) -> DurableCheckpointer:
    ledger.codec.register_pydantic(Verdict)
    return DurableCheckpointer(ledger)


def _fail_once(flag: list[bool]) -> None:
    if not flag:
        flag.append(True)
        raise RuntimeError("first attempt dies after its calls")


def test_lg_replayed_calls_return_the_recorded_values(saver: DurableCheckpointer,
                                                      ledger: Ledger) -> None:
    calls, flag = Calls(), []
    model = CountingChat(counter=calls)
    bound = model.bind_tools([pipeline.send_email])
    structured = model.with_structured_output(Verdict)
    seen: list[Any] = []

    def node(state: S) -> dict[str, Any]:
        answer = bound.invoke([HumanMessage("go")])
        mail = pipeline.send_email.invoke({"to": "zoe"})
        chunks = list(model.stream("summarise:x"))
        verdict = structured.invoke("structure:fine")
        seen.append((answer, mail, chunks, verdict))
        _fail_once(flag)
        return {"out": [answer.content]}

    g = StateGraph(S)
    g.add_node("n", node)
    g.add_edge(START, "n")
    graph = g.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "replay"}}
    with pytest.raises(RuntimeError):
        graph.invoke({"messages": [], "out": []}, config, durability="exit")
    assert calls.model == 3
    assert ledger.get_run("replay").status == "failed"
    assert graph.get_state(config).tasks, "the failed node is pending"
    graph.invoke(None, config, durability="exit")
    assert calls.model == 3, "a recorded model call ran again"
    (a1, m1, c1, v1), (a2, m2, c2, v2) = seen
    assert a2 == a1 and a2.id == a1.id and a2.tool_calls == a1.tool_calls
    assert a2.tool_calls[0]["id"] == "call_mail_ann" and a2.usage_metadata == a1.usage_metadata
    assert m1 == m2 == "sent to zoe"
    assert "".join(str(c.content) for c in c2) == "".join(str(c.content) for c in c1)
    assert v1 == v2 == Verdict(ok=True, why="fine")
    assert ledger.get_run("replay").status == "completed"
    keys = [s.key for s in ledger.steps("replay")]
    assert keys == ["n.1/llm:CountingChat@1", "n.1/tool:send_email@1",
                    "n.1/llm:CountingChat@2", "n.1/llm:CountingChat@3"]


async def test_lg_async_calls_replay(saver: DurableCheckpointer, ledger: Ledger) -> None:
    calls, flag = Calls(), []
    model = CountingChat(counter=calls)

    async def node(state: S) -> dict[str, Any]:
        answer = await model.ainvoke([HumanMessage("go")])
        mail = await pipeline.send_email.ainvoke({"to": "amy"})
        streamed = [c async for c in model.astream("summarise:y")]
        batch = await model.abatch(["summarise:1", "summarise:2"])
        _fail_once(flag)
        return {"out": [answer.content, mail, streamed[-1].content, batch[1].content]}

    g = StateGraph(S)
    g.add_node("n", node)
    g.add_edge(START, "n")
    graph = g.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "areplay"}}
    with pytest.raises(RuntimeError):
        await graph.ainvoke({"messages": [], "out": []}, config, durability="exit")
    assert calls.model == 4
    out = await graph.ainvoke(None, config, durability="exit")
    assert calls.model == 4
    assert out["out"] == ["", "sent to amy", "summary of y", "summary of 2"]
    assert {s.status for s in ledger.steps("areplay")} == {"completed"}


def test_lg_other_checkpointers_are_untouched(saver: DurableCheckpointer, ledger: Ledger) -> None:
    calls = Calls()
    model = CountingChat(counter=calls)
    inside: list[Any] = []

    def node(state: S) -> dict[str, Any]:
        inside.append(agentledger.current_run())
        model.invoke("hello")
        pipeline.send_email.invoke({"to": "x"})
        return {}

    g = StateGraph(S)
    g.add_node("n", node)
    g.add_edge(START, "n")
    for graph in (g.compile(checkpointer=InMemorySaver()), g.compile()):
        graph.invoke({"messages": [], "out": []}, {"configurable": {"thread_id": "plain"}})
    assert inside == [None, None]
    assert calls.model == 2
    assert ledger.list_runs() == []


def test_lg_changed_prompt_raises_nondeterminism(saver: DurableCheckpointer) -> None:
    calls, prompt, flag = Calls(), ["first prompt"], []
    model = CountingChat(counter=calls)

    def node(state: S) -> dict[str, Any]:
        model.invoke(prompt[0])
        _fail_once(flag)
        return {}

    g = StateGraph(S)
    g.add_node("n", node)
    g.add_edge(START, "n")
    graph = g.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "nd"}}
    with pytest.raises(RuntimeError):
        graph.invoke({"messages": [], "out": []}, config, durability="exit")
    prompt[0] = "a different prompt"
    with pytest.raises(NonDeterminismError):
        graph.invoke(None, config, durability="exit")
    assert calls.model == 1


def test_lg_send_fanout_and_subgraph_keep_stable_keys(saver: DurableCheckpointer,
                                                      ledger: Ledger) -> None:
    calls, flag = Calls(), []
    model = CountingChat(counter=calls)

    def inner(state: S) -> dict[str, Any]:
        return {"out": [pipeline.send_email.invoke({"to": "sub"})]}

    sub = StateGraph(S)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    subgraph = sub.compile()

    def fan(state: S) -> list[Send]:
        return [Send("worker", {"messages": [HumanMessage(f"summarise:{i}")], "out": []})
                for i in range(3)]

    def worker(state: S) -> dict[str, Any]:
        return {"out": [model.invoke(state["messages"]).content]}

    def outer(state: S) -> dict[str, Any]:
        result = subgraph.invoke({"messages": [], "out": []})
        _fail_once(flag)
        return {"out": result["out"]}

    g = StateGraph(S)
    g.add_node("worker", worker)
    g.add_node("outer", outer)
    g.add_conditional_edges(START, fan, ["worker"])
    g.add_edge("worker", "outer")
    graph = g.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "fan"}}
    with pytest.raises(RuntimeError):
        graph.invoke({"messages": [], "out": []}, config, durability="exit")
    out = graph.invoke(None, config, durability="exit")
    assert calls.model == 3
    assert sorted(out["out"]) == ["sent to sub", "summary of 0", "summary of 1", "summary of 2"]
    keys = sorted(s.key for s in ledger.steps("fan"))
    assert keys == ["outer.2/inner.1/tool:send_email@1",
                    "worker.1.send0/llm:CountingChat@1", "worker.1.send1/llm:CountingChat@1",
                    "worker.1.send2/llm:CountingChat@1"]


def test_lg_retry_policy_replays_what_succeeded(saver: DurableCheckpointer,
                                                ledger: Ledger) -> None:
    calls = Calls()
    model = CountingChat(counter=calls)
    flaky: list[int] = []
    lookups: list[int] = []

    @agentledger.step
    def lookup() -> str:
        lookups.append(1)
        return "found"

    @agentledger.step
    def reserve() -> str:
        flaky.append(1)
        if len(flaky) < 3:
            raise ConnectionError("flaky")
        return "reserved"

    def node(state: S) -> dict[str, Any]:
        model.invoke("summarise:before")
        pipeline.send_email.invoke({"to": "once"})
        assert lookup() == "found"
        return {"out": [reserve()]}

    g = StateGraph(S)
    g.add_node("n", node, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01,
                                                   retry_on=ConnectionError))
    g.add_edge(START, "n")
    graph = g.compile(checkpointer=saver)
    out = graph.invoke({"messages": [], "out": []}, {"configurable": {"thread_id": "retry"}})
    assert out["out"] == ["reserved"] and len(flaky) == 3
    assert calls.model == 1 and len(lookups) == 1  # what succeeded replays on a retry
    assert [(s.key.split("<locals>.")[-1], s.status) for s in ledger.steps("retry")] == [
        ("n.1/llm:CountingChat@1", "completed"), ("n.1/tool:send_email@1", "completed"),
        ("lookup#1", "completed"), ("reserve#1", "failed"), ("reserve#1.r2", "failed"),
        ("reserve#1.r3", "completed")]


def test_lg_functional_api(ledger: Ledger) -> None:
    from langgraph.func import entrypoint, task

    calls, flag = Calls(), []
    model = CountingChat(counter=calls)

    @task
    def ask(text: str) -> str:
        return str(model.invoke(f"summarise:{text}").content)

    @entrypoint(checkpointer=DurableCheckpointer(ledger))
    def flow(items: list[str]) -> list[str]:
        answers = [ask(t) for t in items]
        results = [a.result() for a in answers]
        _fail_once(flag)
        return results

    config = {"configurable": {"thread_id": "func"}}
    with pytest.raises(RuntimeError):
        flow.invoke(["a", "b"], config, durability="exit")
    assert flow.invoke(None, config, durability="exit") == ["summary of a", "summary of b"]
    assert calls.model == 2
    assert len(ledger.steps("func")) == 2


def test_lg_pipeline_step_keys(saver: DurableCheckpointer, ledger: Ledger) -> None:
    graph = pipeline.build(saver)
    config = {"configurable": {"thread_id": "keys"}}
    pipeline.run_to_end(graph, config, durability="sync")
    keys = [s.key for s in ledger.steps("keys")]
    assert "tools.2/tool:send_email@call_mail_ann" in keys
    assert "tools.2/tool:send_email@call_mail_bob" in keys
    assert "finish.6/step:record_note#1" in keys
    assert "finish.6/batch1.1/llm:ScriptedChat@1" in keys
    assert len(keys) == 11
    tool_msgs = [m for m in graph.get_state(config).values["messages"]
                 if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in tool_msgs] == ["call_mail_ann", "call_mail_bob",
                                                   "call_lookup_1"]


def test_lg_install_is_idempotent_and_uninstall_restores_the_originals(
        saver: DurableCheckpointer) -> None:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.runnables import Runnable
    from langchain_core.tools import BaseTool
    from langgraph.pregel import Pregel, _retry, _runner

    from agentledger.langgraph import _recording

    _recording.install()  # DurableCheckpointer() installed it already: a second call is a no-op
    wrapped = BaseChatModel.invoke
    _recording.install()
    assert BaseChatModel.invoke is wrapped and hasattr(wrapped, "__wrapped__")
    _recording.uninstall()
    _recording.uninstall()
    try:
        for owner, name in [(BaseChatModel, "invoke"), (BaseChatModel, "astream"),
                            (BaseTool, "run"), (BaseTool, "arun"), (Pregel, "stream"),
                            (Pregel, "astream")]:
            assert not hasattr(getattr(owner, name), "__wrapped__"), name
        assert "batch" not in BaseChatModel.__dict__ and BaseChatModel.batch is Runnable.batch
        assert "abatch" not in BaseTool.__dict__ and BaseTool.abatch is Runnable.abatch
        assert _runner.run_with_retry is _retry.run_with_retry
        assert _runner.arun_with_retry is _retry.arun_with_retry
        assert not _recording.installed()
    finally:
        _recording.install()
    assert _recording.installed()


def test_lg_durable_graph_inside_a_run_of_the_users_own(saver: DurableCheckpointer,
                                                        ledger: Ledger) -> None:
    graph = pipeline.build(saver)
    with ledger.run("same-thread") as session:
        pipeline.run_to_end(graph, {"configurable": {"thread_id": "same-thread"}},
                            durability="sync")
        assert agentledger.current_run() is session
    assert len(ledger.steps("same-thread")) == 11
    assert ledger.get_run("same-thread").status == "completed"
    with ledger.run("outer-run") as session:
        pipeline.run_to_end(graph, {"configurable": {"thread_id": "inner-thread"}},
                            durability="sync")
        assert agentledger.current_run() is session
    assert ledger.steps("outer-run") == []
    assert len(ledger.steps("inner-thread")) == 11
    assert ledger.get_run("inner-thread").status == "completed"


def test_lg_stream_closed_early_leaves_a_resumable_run(saver: DurableCheckpointer,
                                                       ledger: Ledger) -> None:
    graph = pipeline.build(saver)
    config = {"configurable": {"thread_id": "closed"}}
    stream = graph.stream(pipeline.INPUTS, config, durability="sync")
    next(stream)
    stream.close()
    run = ledger.get_run("closed")
    assert run.status == "failed" and "closed the stream" in run.last_error
    assert agentledger.current_run() is None
    out = pipeline.run_to_end(graph, config, durability="sync")
    assert out["notes"][0] == "sent to boss"
    assert ledger.get_run("closed").status == "completed"


def test_lg_unusable_thread_id_is_a_clear_error(saver: DurableCheckpointer,
                                                ledger: Ledger) -> None:
    graph = pipeline.build(saver)
    with pytest.raises(ValueError, match=r"thread_id 'a\{b\}' cannot name a durable run"):
        graph.invoke(pipeline.INPUTS, {"configurable": {"thread_id": "a{b}"}})
    assert ledger.list_runs() == []


def test_lg_tool_batch_keys_by_position(saver: DurableCheckpointer, ledger: Ledger,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    monkeypatch.setenv("LG_EFFECTS", str(effects))
    flag: list[bool] = []

    def node(state: S) -> dict[str, Any]:
        sent = pipeline.send_email.batch([{"to": f"r{i}"} for i in range(4)])
        _fail_once(flag)
        return {"out": sent}

    g = StateGraph(S)
    g.add_node("n", node)
    g.add_edge(START, "n")
    graph = g.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "tbatch"}}
    with pytest.raises(RuntimeError):
        graph.invoke({"messages": [], "out": []}, config)
    out = graph.invoke(None, config)
    assert out["out"] == [f"sent to r{i}" for i in range(4)]
    assert sorted(line.split("|")[1] for line in effects.read_text().splitlines()) == [
        "r0", "r1", "r2", "r3"]
    keys = sorted(s.key for s in ledger.steps("tbatch"))
    assert keys == [f"n.1/batch1.{i}/tool:send_email@1" for i in range(4)]
