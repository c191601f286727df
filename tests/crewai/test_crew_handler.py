"""DurableCrewHandler in one process: replay with types, attach/detach, other crews, stop
words, approvals and human input through the CLI, kickoff_for_each, bad input, fail closed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import crew_fakes
import pytest
import redis
from crew_fakes import ScriptedLLM, Summary, build_crew, read_effects
from crewai import Agent, Crew, Task
from crewai.hooks.dispatch import InterceptionPoint, get_hooks, register, unregister
from crewai.tools import tool

from _support import OFFLINE_ENV, REPO, RedisServer
from agentledger import (
    ApprovalPending,
    Ledger,
    LedgerUnavailableError,
    NonDeterminismError,
    RunStatus,
)
from agentledger.crewai import DurableCrewHandler
from agentledger.crewai._llm import DurableLLM

INPUTS = {"topic": "launch"}


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.txt"
    monkeypatch.setenv("CREW_EFFECTS", str(path))
    return path


def _emails(path: Path) -> list[str]:
    return [e for e in read_effects(path) if e.startswith("email:")]


def test_second_kickoff_replays_every_task_without_running_anything(
        ledger: Ledger, effects: Path) -> None:
    first = build_crew(pydantic_output=True)
    h1 = DurableCrewHandler("replay-1", ledger=ledger).attach(first)
    out1 = first.kickoff(inputs=INPUTS)
    ran = read_effects(effects)
    assert h1.last_session is not None and h1.last_session.executed > 0
    assert isinstance(out1.pydantic, Summary)

    second = build_crew(pydantic_output=True)
    h2 = DurableCrewHandler("replay-1", ledger=ledger).attach(second)
    out2 = second.kickoff(inputs=INPUTS)
    assert read_effects(effects) == ran  # nothing ran again
    assert h2.last_session is not None and h2.last_session.executed == 0
    assert out2.raw == out1.raw
    assert [t.raw for t in out2.tasks_output] == [t.raw for t in out1.tasks_output]
    assert isinstance(out2.pydantic, Summary) and out2.pydantic == out1.pydantic
    assert second.tasks[2].output is not None and second.tasks[2].output.pydantic == out1.pydantic
    run = ledger.get_run("replay-1")
    assert run is not None and run.status == RunStatus.COMPLETED


def test_llm_steps_replay_with_their_types(ledger: Ledger, effects: Path) -> None:
    crew = build_crew(native=True, pydantic_output=True)
    DurableCrewHandler("types-1", ledger=ledger).attach(crew)
    crew.kickoff(inputs=INPUTS)
    session = ledger.open_run("types-1")
    try:
        outcomes = {s.key: session.codec.loads(s.outcome or "null")["value"]
                    for s in ledger.steps("types-1") if "/llm:" in s.key}
    finally:
        session.finish(RunStatus.COMPLETED)
    calls = outcomes["task0:researcher/llm:researcher#1"]
    assert calls == [{"id": "call_researcher_0", "type": "function",
                      "function": {"name": "lookup", "arguments": '{"topic": "launch"}'}}]
    assert any(isinstance(v, Summary) for v in outcomes.values())


def test_stop_words_reach_the_real_llm(ledger: Ledger, effects: Path) -> None:
    ScriptedLLM.seen_stops.clear()
    crew = build_crew()
    DurableCrewHandler("stops-1", ledger=ledger).attach(crew)
    crew.kickoff(inputs=INPUTS)
    assert ScriptedLLM.seen_stops, "no live LLM call"
    assert all("\nObservation:" in stops for stops in ScriptedLLM.seen_stops)
    # The instance's own stop list was not changed by the per-call override.
    assert all(isinstance(a.llm, DurableLLM) and a.llm.inner.stop == [] for a in crew.agents)


def test_attach_leaves_other_crews_untouched_and_installs_nothing_global(
        ledger: Ledger, effects: Path) -> None:
    ours, other = build_crew(), build_crew()
    other_llms = [a.llm for a in other.agents]
    hooks_before = {p: get_hooks(p) for p in InterceptionPoint}
    DurableCrewHandler("ours-1", ledger=ledger).attach(ours)
    assert [a.llm for a in other.agents] == other_llms
    assert "kickoff" not in other.__dict__
    ours.kickoff(inputs=INPUTS)
    assert {p: get_hooks(p) for p in InterceptionPoint} == hooks_before
    other_out = other.kickoff(inputs=INPUTS)
    assert [r.run_id for r in ledger.list_runs()] == ["ours-1"]
    assert all(type(a.llm) is ScriptedLLM for a in other.agents)
    assert other_out.raw == "editor done after 0 results"


def test_detach_restores_everything(ledger: Ledger, effects: Path) -> None:
    crew = build_crew(hierarchical=True)
    before_llms = [(a.llm, vars(a)["function_calling_llm"]) for a in crew.agents]
    manager_llm = crew.manager_llm
    handler = DurableCrewHandler("detach-1", ledger=ledger).attach(crew)
    assert all(isinstance(a.llm, DurableLLM) for a in crew.agents)
    with pytest.raises(RuntimeError, match="attached already"):
        DurableCrewHandler("detach-2", ledger=ledger).attach(crew)
    crew.kickoff(inputs=INPUTS)
    handler.detach()
    handler.detach()  # idempotent
    assert [(a.llm, vars(a)["function_calling_llm"]) for a in crew.agents] == before_llms
    assert crew.manager_llm is manager_llm
    assert crew.manager_agent is not None and crew.manager_agent.llm is manager_llm
    for name in ("kickoff", "akickoff", "kickoff_for_each"):
        assert name not in crew.__dict__
    assert all("_execute_core" not in t.__dict__ for t in crew.tasks)
    # The original behaviour is back: a kickoff records nothing.
    out = crew.kickoff(inputs=INPUTS)
    assert out.raw == "Crew Manager done after 1 results"
    assert [r.run_id for r in ledger.list_runs()] == ["detach-1"]


def test_a_changed_input_on_replay_is_a_clear_error(ledger: Ledger, effects: Path) -> None:
    crew = build_crew()
    DurableCrewHandler("changed-1", ledger=ledger).attach(crew)
    crew.kickoff(inputs=INPUTS)
    again = build_crew()
    DurableCrewHandler("changed-1", ledger=ledger).attach(again)
    with pytest.raises(NonDeterminismError, match="task0:researcher/step:task#1"):
        again.kickoff(inputs={"topic": "something else"})
    run = ledger.get_run("changed-1")
    # The second opener's mistake: the completed run stays completed (issue 8 item 12).
    assert run is not None and run.status == RunStatus.COMPLETED


def test_bad_input_is_refused_clearly(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="braces"):
        DurableCrewHandler("bad{id}", ledger=ledger)
    with pytest.raises(TypeError, match="Crew"):
        DurableCrewHandler("ok", ledger=ledger).attach(object())  # type: ignore[arg-type]


def _cli(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentledger._cli", "--url", redis_url,
                           "--prefix", prefix, *args], capture_output=True, text=True,
                          env={**OFFLINE_ENV, "PATH": "/usr/bin:/bin"}, cwd=str(REPO),
                          timeout=60)


def test_human_input_is_a_durable_approval_decided_with_the_cli(
        ledger: Ledger, redis_url: str, prefix: str, effects: Path) -> None:
    def kickoff() -> Any:
        crew = build_crew(human_input=True)
        DurableCrewHandler("human-1", ledger=ledger).attach(crew)
        return crew.kickoff(inputs=INPUTS)

    with pytest.raises(ApprovalPending) as first:
        kickoff()
    run = ledger.get_run("human-1")
    assert run is not None and run.status == RunStatus.WAITING
    pending = ledger.pending_approvals("human-1")
    assert len(pending) == 1 and pending[0].payload["answer"] == "editor done after 0 results"
    done = _cli(redis_url, prefix, "approve", "human-1", first.value.step_key,
                "--by", "ann", "--note", "FEEDBACK: shorter please")
    assert done.returncode == 0, done.stderr
    with pytest.raises(ApprovalPending) as second:
        kickoff()  # the editor works the feedback in, and asks again
    assert second.value.step_key != first.value.step_key
    assert ledger.pending_approvals("human-1")[0].payload["answer"] == (
        "editor done after 0 results with 1 feedback")
    ledger.decide("human-1", second.value.step_key, approved=True, by="ann")
    out = kickoff()
    assert out.raw == "editor done after 0 results with 1 feedback"
    assert len(_emails(effects)) == 2  # the writer's emails went out once


def test_tools_named_for_approval_wait_for_a_person(ledger: Ledger, effects: Path) -> None:
    def kickoff() -> Any:
        crew = build_crew()
        DurableCrewHandler("gate-1", ledger=ledger, approve_tools=["send_email"]).attach(crew)
        return crew.kickoff(inputs=INPUTS)

    with pytest.raises(ApprovalPending) as first:
        kickoff()
    assert _emails(effects) == []
    ledger.decide("gate-1", first.value.step_key, approved=True, by="bo")
    with pytest.raises(ApprovalPending) as second:
        kickoff()
    assert [e.split(":")[1] for e in _emails(effects)] == ["team@example.com"]
    ledger.decide("gate-1", second.value.step_key, approved=False, by="bo", note="not press")
    out = kickoff()
    assert [e.split(":")[1] for e in _emails(effects)] == ["team@example.com"]
    assert out.raw == "editor done after 0 results"
    tool_steps = [s for s in ledger.steps("gate-1") if "/tool:send_email" in s.key]
    assert len(tool_steps) == 1  # the rejected call never became a tool step


def test_kickoff_for_each_gives_each_input_its_own_run(ledger: Ledger, effects: Path) -> None:
    crew = build_crew()
    DurableCrewHandler("each", ledger=ledger).attach(crew)
    outs = crew.kickoff_for_each([{"topic": "a"}, {"topic": "b"}])
    assert [o.raw for o in outs] == ["editor done after 0 results"] * 2
    runs = {r.run_id: r.status for r in ledger.list_runs()}
    assert runs == {"each.0": RunStatus.COMPLETED, "each.1": RunStatus.COMPLETED}
    ran = read_effects(effects)
    crew2 = build_crew()
    DurableCrewHandler("each", ledger=ledger).attach(crew2)
    outs2 = asyncio.run(crew2.akickoff_for_each([{"topic": "a"}, {"topic": "b"}]))
    assert [o.raw for o in outs2] == [o.raw for o in outs]
    assert read_effects(effects) == ran


def test_kickoff_async_is_durable(ledger: Ledger, effects: Path) -> None:
    crew = build_crew(native=True)
    h = DurableCrewHandler("kasync-1", ledger=ledger).attach(crew)
    out = asyncio.run(crew.kickoff_async(inputs=INPUTS))
    assert out.raw == "editor done after 0 results"
    assert h.last_session is not None and h.last_session.executed == 12
    assert len(_emails(effects)) == 2


def test_opening_a_run_fails_closed_when_redis_is_down(effects: Path) -> None:
    server = RedisServer(Path(crew_fakes.__file__).parent / ".unused", appendonly=False)
    ledger = Ledger(client=redis.Redis.from_url(server.url, socket_connect_timeout=0.2),
                    prefix="down")
    crew = build_crew()
    DurableCrewHandler("down-1", ledger=ledger).attach(crew)
    with pytest.raises(LedgerUnavailableError):
        crew.kickoff(inputs=INPUTS)
    assert read_effects(effects) == []


class _KillRedisBeforeTool:
    """A user's global before_tool_call hook (it runs before ours) that kills the ledger's
    Redis just before the first email is sent."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def __call__(self, ctx: Any) -> None:
        if ctx.tool_name == "send_email":
            self.server.kill()


def test_tool_does_not_run_when_redis_dies_before_it(own_redis: RedisServer,
                                                     effects: Path) -> None:
    ledger = Ledger(client=redis.Redis.from_url(own_redis.url, socket_connect_timeout=0.2),
                    prefix="outage")
    crew = build_crew()
    DurableCrewHandler("outage-1", ledger=ledger).attach(crew)
    hook = _KillRedisBeforeTool(own_redis)
    register(InterceptionPoint.PRE_TOOL_CALL, hook)
    try:
        with pytest.raises(LedgerUnavailableError):
            crew.kickoff(inputs=INPUTS)
    finally:
        unregister(InterceptionPoint.PRE_TOOL_CALL, hook)
    lines = read_effects(effects)
    assert "lookup:launch" in lines  # the researcher ran while Redis was up
    assert _emails(effects) == []  # the unrecorded email never went out
    assert lines[-1] == "llm:writer"  # and nothing ran after the failure


def test_llm_answer_that_cannot_be_recorded_stops_the_crew(own_redis: RedisServer,
                                                           effects: Path) -> None:
    ledger = Ledger(client=redis.Redis.from_url(own_redis.url, socket_connect_timeout=0.2),
                    prefix="outage")

    class KillingLLM(ScriptedLLM):
        def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
            own_redis.kill()
            return super().call(messages, *args, **kwargs)

    agent = Agent(role="writer", goal="g", backstory="b", tools=[crew_fakes.send_email],
                  llm=KillingLLM(model="scripted"))
    crew = Crew(agents=[agent], tasks=[Task(description="write", expected_output="x",
                                            agent=agent)])
    DurableCrewHandler("outage-2", ledger=ledger).attach(crew)
    with pytest.raises(LedgerUnavailableError):
        crew.kickoff()
    assert _emails(effects) == []  # the action the LLM chose was never taken


def test_records_are_json(ledger: Ledger, effects: Path, redis_url: str) -> None:
    crew = build_crew(native=True)
    DurableCrewHandler("json-1", ledger=ledger).attach(crew)
    crew.kickoff(inputs=INPUTS)
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(ledger.keys("json-1").steps)
    finally:
        client.close()
    assert raw
    for field, value in raw.items():
        json.loads(value)  # every record is JSON, never pickle
        assert field.decode().split(":", 1)[0] in ("m", "r", "a")


def test_an_approved_tool_call_runs_with_the_edited_arguments(ledger: Ledger,
                                                              effects: Path) -> None:
    def kickoff() -> Any:
        crew = build_crew()
        DurableCrewHandler("edit-1", ledger=ledger, approve_tools=["send_email"]).attach(crew)
        return crew.kickoff(inputs=INPUTS)

    with pytest.raises(ApprovalPending) as first:
        kickoff()
    ledger.decide("edit-1", first.value.step_key, approved=True, by="cy",
                  payload={"to": "boss@example.com"})
    with pytest.raises(ApprovalPending):
        kickoff()  # the second email waits for its own decision
    assert [e.split(":")[1] for e in _emails(effects)] == ["boss@example.com"]


@tool("send_email")
async def send_email_async(to: str, subject: str) -> str:
    """Send an email (an async tool)."""
    await asyncio.sleep(0)
    crew_fakes.record_effect(f"email:{to}:async")
    return f"email to {to} sent"


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("kick", ["kickoff", "akickoff"])
def test_async_tools_are_steps_too(ledger: Ledger, effects: Path, native: bool,
                                   kick: str) -> None:
    def crew() -> Crew:
        writer = Agent(role="writer", goal="g", backstory="b", tools=[send_email_async],
                       llm=ScriptedLLM(model="scripted", native=native))
        return Crew(agents=[writer], tasks=[Task(description="Write and email",
                                                 expected_output="x", agent=writer)])

    def run(c: Crew) -> Any:
        return c.kickoff() if kick == "kickoff" else asyncio.run(c.akickoff())

    first = crew()
    DurableCrewHandler("async-tools", ledger=ledger).attach(first)
    assert run(first).raw == "writer done after 2 results"
    assert _emails(effects) == ["email:team@example.com:async", "email:press@example.com:async"]
    tool_steps = [s.key for s in ledger.steps("async-tools") if "/tool:send_email" in s.key]
    assert len(tool_steps) == 2
    # Lose the task's record: the replay then goes call by call, through the async tools.
    client = redis.Redis.from_url(ledger.url or "")
    try:
        client.hdel(ledger.keys("async-tools").steps, "m:task0:writer/step:task#1",
                    "r:task0:writer/step:task#1")
    finally:
        client.close()
    second = crew()
    h = DurableCrewHandler("async-tools", ledger=ledger).attach(second)
    assert run(second).raw == "writer done after 2 results"
    assert len(_emails(effects)) == 2
    assert h.last_session is not None and h.last_session.replayed == 5


def test_planning_llm_calls_are_steps(ledger: Ledger, effects: Path) -> None:
    def crew() -> Crew:
        c = build_crew()
        c.planning = True
        c.planning_llm = ScriptedLLM(model="scripted")
        return c

    first = crew()
    planner = first.planning_llm
    h1 = DurableCrewHandler("plan-1", ledger=ledger).attach(first)
    assert isinstance(first.planning_llm, DurableLLM)
    first.kickoff(inputs=INPUTS)
    assert "llm:planner#1" in {s.key for s in ledger.steps("plan-1")}
    assert first.tasks[0].description.endswith("plan 1")  # CrewAI used the plan
    h1.detach()
    assert first.planning_llm is planner
    second = crew()
    h2 = DurableCrewHandler("plan-1", ledger=ledger).attach(second)
    second.kickoff(inputs=INPUTS)
    assert h2.last_session is not None and h2.last_session.executed == 0
    assert second.tasks[0].description.endswith("plan 1")  # the replayed plan


def test_two_durable_crews_kicked_off_concurrently_keep_their_own_runs(
        ledger: Ledger, effects: Path) -> None:
    a, b = build_crew(), build_crew(native=True)
    DurableCrewHandler("conc-a", ledger=ledger).attach(a)
    DurableCrewHandler("conc-b", ledger=ledger).attach(b)

    async def both() -> list[Any]:
        return list(await asyncio.gather(a.kickoff_async(inputs=INPUTS),
                                          b.kickoff_async(inputs={"topic": "other"})))

    outs = asyncio.run(both())
    assert [o.raw for o in outs] == ["editor done after 0 results"] * 2
    keys_a = {s.key for s in ledger.steps("conc-a")}
    keys_b = {s.key for s in ledger.steps("conc-b")}
    assert len(keys_a) == len(keys_b) == 12
    assert len(_emails(effects)) == 4


def test_human_input_under_akickoff(ledger: Ledger, effects: Path) -> None:
    def akickoff() -> Any:
        crew = build_crew(human_input=True, native=True)
        DurableCrewHandler("ahuman-1", ledger=ledger).attach(crew)
        return asyncio.run(crew.akickoff(inputs=INPUTS))

    with pytest.raises(ApprovalPending) as first:
        akickoff()
    ledger.decide("ahuman-1", first.value.step_key, approved=False, by="dee",
                  note="FEEDBACK: warmer tone")
    with pytest.raises(ApprovalPending) as second:
        akickoff()
    ledger.decide("ahuman-1", second.value.step_key, approved=True, by="dee")
    assert akickoff().raw == "editor done after 0 results with 1 feedback"
    assert len(_emails(effects)) == 2


def test_the_proxy_is_inert_outside_a_run(ledger: Ledger, effects: Path) -> None:
    from crewai.llms.base_llm import call_stop_override

    crew = build_crew()
    DurableCrewHandler("inert-1", ledger=ledger).attach(crew)
    proxy = crew.agents[0].llm
    assert isinstance(proxy, DurableLLM)
    messages = [{"role": "system", "content": "You are researcher."},
                {"role": "user", "content": "go"}]
    ScriptedLLM.seen_stops.clear()
    with call_stop_override(proxy, ["\nSTOP:"]):
        answer = proxy.call(messages)
    direct = proxy.inner.call(messages)
    assert answer == direct and answer.startswith("Thought: step 0\nAction: lookup")
    assert ScriptedLLM.seen_stops[0] == ["\nSTOP:"]  # the per-call stop words got through
    from crewai.llms.base_llm import call_stream_override

    with call_stream_override(proxy, True):
        assert proxy.inner._effective_stream() is None  # outside the call: untouched
        seen: list[Any] = []
        original = ScriptedLLM._answer

        def spy(self: ScriptedLLM, *args: Any) -> Any:
            seen.append(self._effective_stream())
            return original(self, *args)

        ScriptedLLM._answer = spy  # type: ignore[method-assign]
        try:
            proxy.call(messages)
        finally:
            ScriptedLLM._answer = original  # type: ignore[method-assign]
    assert seen == [True]  # per-call streaming reached the real LLM too
    assert proxy.supports_function_calling() is False
    assert ledger.list_runs() == []


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_a_crew_recorded_at_durability_async_completes_and_replays(
        ledger: Ledger, effects: Path, durability: str) -> None:
    # docs/durability.md: records sent without waiting, acknowledged when the kickoff ends.
    # ('exit' is 'async' for the ledger; the crash matrix runs at 'async'.)
    first = build_crew()
    h1 = DurableCrewHandler("async-1", ledger=ledger, durability=durability).attach(first)
    out1 = first.kickoff(inputs=INPUTS)
    ran = read_effects(effects)
    assert h1.last_session is not None and h1.last_session.executed > 0
    assert h1.last_session._hot.pipelined  # the level reached the run's records
    run = ledger.get_run("async-1")
    assert run is not None and run.status == RunStatus.COMPLETED
    assert {s.status for s in ledger.steps("async-1")} == {"completed"}
    second = build_crew()
    h2 = DurableCrewHandler("async-1", ledger=ledger, durability=durability).attach(second)
    assert second.kickoff(inputs=INPUTS).raw == out1.raw
    assert read_effects(effects) == ran
    assert h2.last_session is not None and h2.last_session.executed == 0


def test_a_joined_run_records_the_crew_at_the_handlers_durability(
        ledger: Ledger, effects: Path) -> None:
    # Inside a run opened elsewhere (a worker's pipeline): the handler's durability= applies
    # to the crew's calls; the opener's level ('sync', the ledger's) is back afterwards.
    with ledger.run("cj") as outer:
        crew = build_crew()
        DurableCrewHandler("cj", ledger=ledger, durability="async").attach(crew)
        crew.kickoff(inputs=INPUTS)
        assert outer._hot.unacknowledged > 0  # its records were sent without waiting
        assert outer._hot.pipelined is False
    assert {s.status for s in ledger.steps("cj")} == {"completed"}
