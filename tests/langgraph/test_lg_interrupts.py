"""``interrupt()`` in a durable run is an approval step: listed with its payload, decided
through the ledger (the CLI's ``approve``), and the next invocation resumes with the decision
without re-running the calls the node made before its interrupt."""

from __future__ import annotations

import json
import operator
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import START, StateGraph
from langgraph.types import Command, interrupt

from _support import killed, run_child, tmpdir
from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer

CHILDREN = Path(__file__).parent / "children"
sys.path.insert(0, str(CHILDREN))
import lg_review as review  # noqa: E402


def _effects(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def effects(monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmpdir("lg-interrupt-") / "effects"
    monkeypatch.setenv("LG_EFFECTS", str(path))
    return path


def test_lg_interrupt_is_a_durable_approval(ledger: Ledger, effects: Path) -> None:
    graph = review.build(DurableCheckpointer(ledger))
    config = {"configurable": {"thread_id": "review-1"}}
    out = graph.invoke({"log": []}, config)
    assert "__interrupt__" in out
    assert ledger.get_run("review-1").status == "waiting"
    pending = ledger.pending_approvals()
    assert len(pending) == 1 and pending[0].run_id == "review-1"
    assert pending[0].payload == {"question": "send this?", "draft": "draft about launch"}
    assert pending[0].key == "review.1/approval:interrupt@0"

    # Invoked again before anyone decided: still waiting, nothing re-run.
    assert "__interrupt__" in graph.invoke(None, config)
    assert ledger.get_run("review-1").status == "waiting"

    ledger.decide("review-1", approved=True, by="ann", payload={"to": "team"})
    out = graph.invoke(None, config)
    assert out["log"] == ["draft about launch", {"to": "team"}, "sent to team"]
    assert ledger.get_run("review-1").status == "completed"
    assert ledger.pending_approvals("review-1") == []
    assert [e.split("|")[:2] for e in _effects(effects)] == [["draft", "launch"],
                                                             ["send", "team"]]


def test_lg_rejection_without_payload_resumes_with_the_decision(ledger: Ledger,
                                                                effects: Path) -> None:
    graph = review.build(DurableCheckpointer(ledger))
    config = {"configurable": {"thread_id": "review-2"}}
    graph.invoke({"log": []}, config)
    ledger.decide("review-2", approved=False, by="bob", note="not yet")
    out = graph.invoke(None, config)
    assert out["log"][1] == {"approved": False, "note": "not yet", "by": "bob"}
    assert out["log"][2] == "not sent"
    assert len(_effects(effects)) == 1


def test_lg_command_resume_settles_the_approval(ledger: Ledger, effects: Path) -> None:
    graph = review.build(DurableCheckpointer(ledger))
    config = {"configurable": {"thread_id": "review-3"}}
    graph.invoke({"log": []}, config)
    assert len(ledger.pending_approvals("review-3")) == 1
    out = graph.invoke(Command(resume={"to": "direct"}), config)
    assert out["log"][2] == "sent to direct"
    assert ledger.pending_approvals("review-3") == []
    step = next(s for s in ledger.steps("review-3") if s.kind == "approval")
    assert step.status == "completed"
    assert [e.split("|")[0] for e in _effects(effects)] == ["draft", "send"]


async def test_lg_async_interrupt_approval(ledger: Ledger, effects: Path) -> None:
    graph = review.build(DurableCheckpointer(ledger), use_async=True)
    config = {"configurable": {"thread_id": "review-4"}}
    out = await graph.ainvoke({"log": []}, config)
    assert "__interrupt__" in out
    pending = await ledger.apending_approvals("review-4")
    assert pending[0].payload["draft"] == "draft about launch"
    await ledger.adecide("review-4", approved=True, payload="async-team")
    out = await graph.ainvoke(None, config)
    assert out["log"][2] == "sent to async-team"
    assert [e.split("|")[0] for e in _effects(effects)] == ["draft", "send"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_lg_interrupt_then_crash_then_approve(redis_url: str, prefix: str, mode: str) -> None:
    path = tmpdir("lg-review-") / "effects"
    thread = f"review-crash-{mode}"
    env = {"LG_EFFECTS": str(path)}
    child = CHILDREN / "lg_review.py"

    first = run_child(child, redis_url, prefix, thread, mode, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout.splitlines()[-1])["interrupted"]

    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        assert [p.run_id for p in ledger.pending_approvals()] == [thread]
        ledger.decide(thread, approved=True, by="ops", payload={"to": "all"})

        crashed = run_child(child, redis_url, prefix, thread, mode,
                            env={**env, "LG_KILL_AFTER_SEND": "1"})
        assert killed(crashed), crashed.stderr[-2000:]
        done = run_child(child, redis_url, prefix, thread, mode, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["log"] == ["draft about launch", {"to": "all"}, "sent to all"]
        assert ledger.get_run(thread).status == "completed"
    finally:
        ledger.close()
    lines = [e.split("|") for e in _effects(path)]
    assert [x[:2] for x in lines] == [["draft", "launch"], ["send", "all"], ["send", "all"]]
    # The send was killed inside its body: it ran again, with the same idempotency key.
    assert lines[1][2] == lines[2][2] and lines[1][2].startswith("al-")


def test_lg_interrupt_through_the_cli(redis_url: str, prefix: str, ledger: Ledger,
                                      effects: Path) -> None:
    import io

    from agentledger._cli import main as cli

    graph = review.build(DurableCheckpointer(ledger))
    config = {"configurable": {"thread_id": "review-cli"}}
    graph.invoke({"log": []}, config)
    out = io.StringIO()
    assert cli(["--url", redis_url, "--prefix", prefix, "--json", "approvals"], out) == 0
    listed = json.loads(out.getvalue())
    assert [(a["run_id"], a["payload"]["question"]) for a in listed] == [("review-cli",
                                                                         "send this?")]
    assert cli(["--url", redis_url, "--prefix", prefix, "approve", "review-cli", "--by", "cli",
                "--payload", '{"to": "cli-team"}'], io.StringIO()) == 0
    out_state = graph.invoke(None, config)
    assert out_state["log"][2] == "sent to cli-team"
    assert [e.split("|")[0] for e in _effects(effects)] == ["draft", "send"]


def test_lg_create_agent_human_in_the_loop_is_an_approval(ledger: Ledger, effects: Path) -> None:
    import lg_pipeline as pipeline
    from langchain.agents import create_agent
    from langchain.agents.middleware import HumanInTheLoopMiddleware

    agent = create_agent(pipeline.ScriptedChat(), [pipeline.send_email, pipeline.lookup],
                         middleware=[HumanInTheLoopMiddleware(interrupt_on={"send_email": True})],
                         checkpointer=DurableCheckpointer(ledger))
    config = {"configurable": {"thread_id": "hitl"}}
    assert "__interrupt__" in agent.invoke({"messages": [("user", "notify")]}, config)
    assert not _effects(effects), "no email before the decision"
    (pending,) = ledger.pending_approvals("hitl")
    assert [a["args"] for a in pending.payload["action_requests"]] == [{"to": "ann"},
                                                                       {"to": "bob"}]
    ledger.decide("hitl", approved=True, by="ops", payload={"decisions": [
        {"type": "approve"}, {"type": "reject", "message": "not bob"}]})
    out = agent.invoke(None, config)
    assert out["messages"][-1].content.startswith("done after")
    assert [e.split("|")[:2] for e in _effects(effects)] == [["send_email", "ann"],
                                                             ["lookup", "price"]]
    assert ledger.get_run("hitl").status == "completed"


@pytest.mark.slow
def test_lg_killed_right_after_the_interrupt_was_recorded(redis_url: str, prefix: str) -> None:
    """Interrupt, crash (before the run could even be marked waiting), approve, resume."""
    path = tmpdir("lg-review-") / "effects"
    thread = "review-killed-waiting"
    child = CHILDREN / "lg_review.py"
    # after_claim #1 is the draft tool's intent, #2 the interrupt's approval request.
    first = run_child(child, redis_url, prefix, thread, "sync",
                      env={"LG_EFFECTS": str(path), "AGENTLEDGER_CRASH_AT": "after_claim:2"})
    assert killed(first), first.stderr[-2000:]
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        (pending,) = ledger.pending_approvals(thread)
        assert pending.payload == {"question": "send this?", "draft": "draft about launch"}
        # The crashed run is stalled, and its approval is listed with all the others.
        assert [p.key for p in ledger.pending_approvals()] == [pending.key]
        ledger.decide(thread, approved=True, by="ops", payload={"to": "after-crash"})
        done = run_child(child, redis_url, prefix, thread, "sync", env={"LG_EFFECTS": str(path)})
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["log"] == ["draft about launch", {"to": "after-crash"},
                                 "sent to after-crash"]
        assert ledger.get_run(thread).status == "completed"
    finally:
        ledger.close()
    assert [e.split("|")[:2] for e in _effects(path)] == [["draft", "launch"],
                                                          ["send", "after-crash"]]


def test_lg_interrupt_inside_a_subgraph(ledger: Ledger) -> None:
    class S(TypedDict):
        log: Annotated[list[Any], operator.add]

    def inner(state: S) -> dict[str, Any]:
        return {"log": [interrupt({"q": "inner?"})]}

    sub = StateGraph(S)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    subgraph = sub.compile()

    def outer(state: S) -> dict[str, Any]:
        return {"log": subgraph.invoke({"log": []})["log"]}

    g = StateGraph(S)
    g.add_node("outer", outer)
    g.add_edge(START, "outer")
    graph = g.compile(checkpointer=DurableCheckpointer(ledger))
    config = {"configurable": {"thread_id": "sub-interrupt"}}
    assert "__interrupt__" in graph.invoke({"log": []}, config)
    # Recorded once, by the task that asked (not again by the task around the subgraph).
    (pending,) = ledger.pending_approvals("sub-interrupt")
    assert pending.key == "outer.1/inner.1/approval:interrupt@0"
    assert pending.payload == {"q": "inner?"}
    ledger.decide("sub-interrupt", approved=True, payload="yes-inner")
    assert graph.invoke(None, config)["log"] == ["yes-inner"]
    assert ledger.get_run("sub-interrupt").status == "completed"
