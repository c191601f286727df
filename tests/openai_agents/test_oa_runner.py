"""DurableRunner in one process: replay, byte-identical model input, the SDK left untouched,
errors, terminal outcomes, model sources, streaming and bad records. Crashes are in
test_oa_crash_matrix.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent / "children"))

import agents.run_internal.run_loop as run_loop
import agents.run_internal.tool_execution as tool_execution
from agents import (
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    MaxTurnsExceeded,
    ModelProvider,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    UserError,
    function_tool,
    input_guardrail,
)
from oa_world import (
    ScriptedModel,
    _seq,
    agent_for,
    call,
    outputs,
    say,
)

from agentledger import Ledger, LedgerError, RunStatus, UnsupportedTypeError
from agentledger.openai_agents import DurableRunner
from agentledger.openai_agents._patch import install, installed, uninstall


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.txt"
    monkeypatch.setenv("AL_EFFECTS", str(path))
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def model_of(agent: Agent[Any]) -> ScriptedModel:
    assert isinstance(agent.model, ScriptedModel)
    return agent.model


async def test_completed_run_replays_without_calling_anything(ledger: Ledger, effects: Path
                                                              ) -> None:
    first = await DurableRunner.run(agent_for("seq"), "go", run_id="r1", ledger=ledger)
    assert first.final_output == "done: reserved book; charged 30 for order 42"
    assert len(lines(effects)) == 2
    again = agent_for("seq")
    second = await DurableRunner.run(again, "go", run_id="r1", ledger=ledger)
    assert second.final_output == first.final_output
    assert model_of(again).inputs == []  # no live model call
    assert len(lines(effects)) == 2  # no tool ran again
    assert [type(i).__name__ for i in second.new_items] == [type(i).__name__ for i in first.new_items]
    run = ledger.get_run("r1")
    assert run is not None and run.status == RunStatus.COMPLETED


async def test_replayed_output_is_byte_identical_input_to_the_next_turn(
        ledger: Ledger, redis_url: str, effects: Path) -> None:
    agent = agent_for("seq")
    await DurableRunner.run(agent, "go", run_id="bytes", ledger=ledger)
    live_inputs = model_of(agent).inputs
    assert len(live_inputs) == 3
    # Forget the last model call: the next run replays the first two from their records and
    # asks the model live for the third, which must see exactly what it saw the first time.
    client = redis.Redis.from_url(redis_url)
    steps = ledger.keys("bytes").steps
    last = [f.decode() for f in client.hkeys(steps) if f.decode().endswith("llm:shop#3")]
    assert len(last) == 2
    client.hdel(steps, *last)
    client.close()
    again = agent_for("seq")
    await DurableRunner.run(again, "go", run_id="bytes", ledger=ledger)
    assert len(model_of(again).inputs) == 1
    assert json.dumps(model_of(again).inputs[0]) == json.dumps(live_inputs[2])


async def test_plain_runner_and_the_users_objects_are_untouched(ledger: Ledger, effects: Path
                                                               ) -> None:
    uninstall()
    originals = (run_loop.get_model, tool_execution._invoke_function_tool_with_metadata,
                 run_loop.get_handoffs)
    agent = agent_for("handoff")
    h0 = agent.handoffs[0]
    invoke = h0.on_invoke_handoff
    billing = h0._agent_ref() if h0._agent_ref is not None else None
    assert billing is not None
    billing_tools, billing_model = list(billing.tools), billing.model
    tool_invoke = billing.tools[0].on_invoke_tool  # type: ignore[union-attr]
    install()
    install()  # idempotent
    assert installed()
    await DurableRunner.run(agent, "go", run_id="h1", ledger=ledger)
    assert agent.handoffs == [h0] and h0.on_invoke_handoff is invoke
    assert billing.tools == billing_tools and billing.model is billing_model
    assert billing.tools[0].on_invoke_tool is tool_invoke  # type: ignore[union-attr]
    # Outside a durable run the patched SDK runs every call, records nothing.
    n = len(lines(effects))
    for _ in range(2):
        result = await Runner.run(agent, "go")
        assert result.final_output == "billing done: charged 99 for order 42"
    assert len(lines(effects)) == n + 4  # on_handoff and charge_card, twice
    assert ledger.get_run("h1") is not None and ledger.list_runs()[0].run_id == "h1"
    uninstall()
    uninstall()
    assert not installed()
    assert (run_loop.get_model, tool_execution._invoke_function_tool_with_metadata,
            run_loop.get_handoffs) == originals
    result = await Runner.run(agent_for("seq"), "go")
    assert result.final_output == "done: reserved book; charged 30 for order 42"
    install()


async def test_a_failing_tool_replays_the_text_the_model_saw(ledger: Ledger, effects: Path) -> None:
    agent = agent_for("flaky")
    first = await DurableRunner.run(agent, "go", run_id="flaky", ledger=ledger)
    seen = outputs(model_of(agent).inputs[-1])
    assert seen[0].startswith("An error occurred while running the tool")
    assert first.final_output == "tool said: " + seen[0]
    again = agent_for("flaky")
    second = await DurableRunner.run(again, "go", run_id="flaky", ledger=ledger)
    assert second.final_output == first.final_output
    assert lines(effects).count(lines(effects)[0]) == 1 and len(lines(effects)) == 1


async def test_max_turns_is_a_terminal_outcome_of_the_run(ledger: Ledger, effects: Path) -> None:
    with pytest.raises(MaxTurnsExceeded):
        await DurableRunner.run(agent_for("loop"), "go", run_id="loop", ledger=ledger,
                                max_turns=2)
    run = ledger.get_run("loop")
    assert run is not None and run.status == RunStatus.FAILED
    assert "MaxTurnsExceeded" in run.last_error
    n = len(lines(effects))
    with pytest.raises(MaxTurnsExceeded):  # started again: the same end, nothing re-run
        await DurableRunner.run(agent_for("loop"), "go", run_id="loop", ledger=ledger,
                                max_turns=2)
    assert len(lines(effects)) == n == 2


async def test_a_guardrail_tripwire_is_a_terminal_outcome(ledger: Ledger, effects: Path) -> None:
    @input_guardrail
    async def no_refunds(ctx: Any, agent: Any, input: Any) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info="refund", tripwire_triggered="refund" in str(input))

    agent = agent_for("seq").clone(input_guardrails=[no_refunds])
    with pytest.raises(InputGuardrailTripwireTriggered):
        await DurableRunner.run(agent, "refund please", run_id="guard", ledger=ledger)
    run = ledger.get_run("guard")
    assert run is not None and run.status == RunStatus.FAILED
    assert "InputGuardrailTripwireTriggered" in run.last_error


def test_run_sync(ledger: Ledger, effects: Path) -> None:
    result = DurableRunner.run_sync(agent_for("parallel"), "go", run_id="sync", ledger=ledger)
    assert result.final_output.startswith("done: charged 12")
    again = DurableRunner.run_sync(agent_for("parallel"), "go", run_id="sync", ledger=ledger)
    assert again.final_output == result.final_output
    assert len(lines(effects)) == 3


class FakeProvider(ModelProvider):
    def __init__(self) -> None:
        self.model = ScriptedModel("provided", _seq)

    def get_model(self, model_name: str | None) -> ScriptedModel:
        assert model_name == "fake-model"
        return self.model


@pytest.mark.parametrize("source", ["run_config", "provider"])
async def test_models_from_run_config_and_provider_are_recorded(
        source: str, ledger: Ledger, effects: Path) -> None:
    tools = agent_for("seq").tools

    def start() -> tuple[Agent[Any], RunConfig, ScriptedModel]:
        if source == "run_config":
            model = ScriptedModel("cfg", _seq)
            return Agent(name="shop", tools=tools), RunConfig(model=model), model
        provider = FakeProvider()
        return (Agent(name="shop", tools=tools, model="fake-model"),
                RunConfig(model_provider=provider), provider.model)

    agent, cfg, model = start()
    first = await DurableRunner.run(agent, "go", run_id=source, ledger=ledger, run_config=cfg)
    assert len(model.inputs) == 3
    agent, cfg, model = start()
    second = await DurableRunner.run(agent, "go", run_id=source, ledger=ledger, run_config=cfg)
    assert model.inputs == [] and second.final_output == first.final_output
    assert len(lines(effects)) == 2


async def test_streamed_run_gives_the_runners_events_then_replays(ledger: Ledger, effects: Path
                                                                 ) -> None:
    async def events(streamed: Any) -> list[tuple[str, str]]:
        return [(e.type, getattr(e, "name", "") or getattr(getattr(e, "data", None), "type", ""))
                for e in [ev async for ev in streamed.stream_events()]]

    plain = Runner.run_streamed(agent_for("seq"), "go")
    expected = await events(plain)
    live = DurableRunner.run_streamed(agent_for("seq"), "go", run_id="st", ledger=ledger)
    got = await events(live)
    assert got == expected
    assert live.final_output == plain.final_output
    again = agent_for("seq")
    replayed = DurableRunner.run_streamed(again, "go", run_id="st", ledger=ledger)
    got_again = await events(replayed)
    assert model_of(again).inputs == []
    assert replayed.final_output == plain.final_output
    items = [e for e in got_again if e[0] == "run_item_stream_event"]
    assert items == [e for e in expected if e[0] == "run_item_stream_event"]
    assert len(lines(effects)) == 4  # the plain run's two, the durable run's two
    run = ledger.get_run("st")
    assert run is not None and run.status == RunStatus.COMPLETED


async def test_an_approval_stops_the_run_and_resume_continues(ledger: Ledger, effects: Path
                                                              ) -> None:
    agent = agent_for("approval")
    result = await DurableRunner.run(agent, "go", run_id="ap", ledger=ledger)
    assert len(result.interruptions) == 1
    run = ledger.get_run("ap")
    assert run is not None and run.status == RunStatus.WAITING
    from agentledger import ApprovalPending

    with pytest.raises(ApprovalPending):
        await DurableRunner.resume("ap", ledger=ledger)
    (pending,) = ledger.pending_approvals("ap")
    ledger.decide("ap", pending.key, approved=False, by="ann", note="not this one")
    done = await DurableRunner.resume("ap", ledger=ledger)
    assert "not this one" in done.final_output
    assert [x.split()[0] for x in lines(effects)] == ["reserve"]  # rejected: never ran
    with pytest.raises(LedgerError, match="no saved state"):
        await DurableRunner.resume("never-waited", agent, ledger=ledger)


async def test_a_corrupt_saved_state_is_a_clear_error(ledger: Ledger, redis_url: str,
                                                      effects: Path) -> None:
    await DurableRunner.run(agent_for("approval"), "go", run_id="bad", ledger=ledger)
    client = redis.Redis.from_url(redis_url)
    key = ledger.keys("bad").extra("oa-state")
    assert client.sismember(ledger.keys("bad").keyset, key)  # expires and is deleted with the run
    client.set(key, b"{not json")
    client.close()
    with pytest.raises(LedgerError, match="not JSON"):
        await DurableRunner.resume("bad", agent_for("approval"), ledger=ledger)
    assert ledger.delete_run("bad") >= 3


class Receipt:
    def __init__(self, n: int) -> None:
        self.n = n


async def test_an_unrecordable_tool_result_fails_clearly(ledger: Ledger) -> None:
    @function_tool(failure_error_function=None)
    def make_receipt() -> Receipt:
        """Make a receipt."""
        return Receipt(1)

    def script(items: list[dict[str, Any]]) -> list[Any]:
        return [call("make_receipt")] if not outputs(items) else [say("ok")]

    agent = Agent(name="r", tools=[make_receipt], model=ScriptedModel("r", script))
    with pytest.raises(UserError, match="allow-list") as caught:
        await DurableRunner.run(agent, "go", run_id="receipt", ledger=ledger)
    assert isinstance(caught.value.__cause__, UnsupportedTypeError)
    run = ledger.get_run("receipt")
    assert run is not None and run.status == RunStatus.FAILED
    ledger.codec.register(Receipt, "test:Receipt", lambda r: r.n, Receipt)
    result = await DurableRunner.run(agent, "go", run_id="receipt2", ledger=ledger)
    assert result.final_output == "ok"


async def test_mcp_tools_are_steps_keyed_by_call_id(ledger: Ledger, effects: Path) -> None:
    import os

    from agents.mcp import MCPServerStdio

    server_script = Path(__file__).parent / "children" / "oa_mcp_server.py"

    def script(items: list[dict[str, Any]]) -> list[Any]:
        seen = outputs(items)
        return [call("book_room", room="blue")] if not seen else [say("mcp says " + seen[0])]

    finals = []
    for _ in range(2):
        model = ScriptedModel("rooms", script)
        async with MCPServerStdio(params={"command": sys.executable, "args": [str(server_script)],
                                          "env": dict(os.environ)}) as server:
            agent = Agent(name="rooms", mcp_servers=[server], model=model)
            result = await DurableRunner.run(agent, "book", run_id="mcp", ledger=ledger)
        finals.append(result.final_output)
    assert "booked blue" in finals[0] and finals[1] == finals[0]
    assert model.inputs == []  # the second run replayed both model calls
    assert [x.split()[0] for x in lines(effects)] == ["book_room"]  # and the MCP call
    (tool_step,) = [s for s in ledger.steps("mcp") if s.kind == "tool"]
    assert tool_step.key.startswith("tool:book_room@call_") and tool_step.replays == 1


async def test_a_streamed_run_stops_for_approval_and_resumes(ledger: Ledger, effects: Path
                                                             ) -> None:
    streamed = DurableRunner.run_streamed(agent_for("approval"), "go", run_id="sap",
                                          ledger=ledger)
    async for _ in streamed.stream_events():
        pass
    assert len(streamed.interruptions) == 1
    run = ledger.get_run("sap")
    assert run is not None and run.status == RunStatus.WAITING
    (pending,) = ledger.pending_approvals("sap")
    with pytest.raises(LedgerError, match="resume"):
        DurableRunner.run_streamed(agent_for("approval"), "go", run_id="sap", ledger=ledger)
    ledger.decide("sap", pending.key, approved=True, by="ann")
    done = await DurableRunner.resume("sap", ledger=ledger)  # the agent is known here
    assert done.final_output == "done: reserved chair; refunded 70 for order 5"
    assert [x.split()[0] for x in lines(effects)] == ["reserve", "refund"]


async def test_a_replay_that_asks_something_else_is_refused(ledger: Ledger, effects: Path) -> None:
    from agentledger import NonDeterminismError

    await DurableRunner.run(agent_for("seq"), "go", run_id="nd", ledger=ledger)
    changed = agent_for("seq").clone(instructions="sell something else")
    with pytest.raises(NonDeterminismError, match="llm:shop#1"):
        await DurableRunner.run(changed, "go", run_id="nd", ledger=ledger)
    assert len(lines(effects)) == 2  # nothing ran again


async def test_a_raising_tool_without_error_text_raises_the_recorded_error(
        ledger: Ledger, effects: Path) -> None:
    calls = []

    @function_tool(failure_error_function=None)
    def explode(order: int) -> str:
        """Always fails."""
        calls.append(order)
        raise ValueError(f"no stock for {order}")

    def script(items: list[dict[str, Any]]) -> list[Any]:
        return [call("explode", order=8)] if not outputs(items) else [say("unreachable")]

    for _ in range(2):
        agent = Agent(name="x", tools=[explode], model=ScriptedModel("x", script))
        with pytest.raises(UserError, match="no stock for 8") as caught:
            await DurableRunner.run(agent, "go", run_id="boom", ledger=ledger)
        assert isinstance(caught.value.__cause__, ValueError)
    assert calls == [8]  # the second run raised the recorded error without running the tool


async def test_hooks_and_context_behave_as_with_runner(ledger: Ledger, effects: Path) -> None:
    class Counting(RunHooks[Any]):
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def on_llm_start(self, context: Any, agent: Any, *args: Any) -> None:
            self.seen.append("llm_start")

        async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
            self.seen.append(f"tool_start:{tool.name}")

        async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: str) -> None:
            self.seen.append(f"tool_end:{result}")

    @function_tool
    def whoami(ctx: RunContextWrapper[dict[str, str]]) -> str:
        """Who is asking."""
        return ctx.context["user"]

    def script(items: list[dict[str, Any]]) -> list[Any]:
        return [call("whoami")] if not outputs(items) else [say("hello " + outputs(items)[0])]

    def run_args() -> tuple[Agent[Any], Counting]:
        return Agent(name="w", tools=[whoami], model=ScriptedModel("w", script)), Counting()

    agent, plain_hooks = run_args()
    plain = await Runner.run(agent, "go", context={"user": "ann"}, hooks=plain_hooks)
    for _ in range(2):  # live, then replayed
        agent, hooks = run_args()
        result = await DurableRunner.run(agent, "go", run_id="hooks", ledger=ledger,
                                         context={"user": "ann"}, hooks=hooks)
        assert result.final_output == plain.final_output == "hello ann"
        assert hooks.seen == plain_hooks.seen
        assert result.context_wrapper.context == {"user": "ann"}


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_durability_level_of_a_run(ledger: Ledger, effects: Path, durability: str) -> None:
    # docs/durability.md: at 'async' the records are sent and acknowledged when the run ends;
    # the run replays the same either way.
    first = await DurableRunner.run(agent_for("seq"), "go", run_id="rd", ledger=ledger,
                                    durability=durability)
    assert first.final_output == "done: reserved book; charged 30 for order 42"
    run = ledger.get_run("rd")
    assert run is not None and run.status == RunStatus.COMPLETED
    assert {s.status for s in ledger.steps("rd")} == {"completed"}
    again = agent_for("seq")
    second = await DurableRunner.run(again, "go", run_id="rd", ledger=ledger,
                                     durability=durability)
    assert second.final_output == first.final_output
    assert model_of(again).inputs == [] and len(lines(effects)) == 2


async def test_a_joined_run_records_the_runner_at_its_own_durability(
        ledger: Ledger, effects: Path) -> None:
    # Inside a run opened elsewhere (a worker's pipeline): the runner's durability= applies to
    # its calls; the opener's level ('sync', the ledger's) is back when it returns.
    async with ledger.arun("rj") as outer:
        result = await DurableRunner.run(agent_for("seq"), "go", run_id="rj", ledger=ledger,
                                         durability="async")
        assert result.final_output == "done: reserved book; charged 30 for order 42"
        assert outer._hot.unacknowledged > 0  # its records were sent without waiting
        assert outer._hot.pipelined is False
    assert {s.status for s in ledger.steps("rj")} == {"completed"}  # acknowledged at the end
