"""DurableRunner behaves as Runner does where the SDK has rules of its own: what a model
request carries, how the conversation session is read and rewound, how streams close, how
retries and errors look. Each test compares a durable run with a plain one, or pins the
SDK's documented behaviour."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "children"))

from agents import (
    Agent,
    ModelBehaviorError,
    ModelResponse,
    ModelRetrySettings,
    ModelSettings,
    Runner,
    Usage,
    UserError,
    function_tool,
    retry_policies,
    set_tracing_disabled,
)
from agents.extensions.experimental.codex import CodexToolResult
from agents.extensions.experimental.codex import Usage as CodexUsage
from agents.models.interface import Model
from agents.models.openai_responses import OpenAIResponsesModel
from oa_http import FakeResponses, fake_responses
from oa_world import ScriptedModel, agent_for, say
from oa_world import call as call_tool
from openai import AsyncOpenAI
from openai._models import construct_type
from openai.types.responses import (
    Response,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseOutputMessage,
)
from openai.types.responses.response_output_item import ResponseOutputItem

from agentledger import Ledger, RunStatus
from agentledger.openai_agents import DurableRunner

set_tracing_disabled(True)


@pytest.fixture
def endpoint() -> Iterator[tuple[FakeResponses, str]]:
    with fake_responses() as found:
        yield found


class CachingResponsesModel(OpenAIResponsesModel):
    """A Responses model for a proxy that honours prompt cache keys (the SDK sends its
    automatic key only to models that say so)."""

    def _supports_default_prompt_cache_key(self) -> bool:
        return True


def responses_agent(base_url: str, cls: type[OpenAIResponsesModel] = OpenAIResponsesModel,
                    max_retries: int = 0) -> Agent[Any]:
    client = AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=max_retries)
    return Agent(name="desk", instructions="help", model=cls("gpt-test", client))


@pytest.mark.parametrize("cls", [CachingResponsesModel, OpenAIResponsesModel])
async def test_the_automatic_prompt_cache_key_is_sent_as_plainly(
        cls: type[OpenAIResponsesModel], ledger: Ledger,
        endpoint: tuple[FakeResponses, str]) -> None:
    fake, url = endpoint
    plain = await Runner.run(responses_agent(url, cls), "hi")
    durable = await DurableRunner.run(responses_agent(url, cls), "hi", run_id="pck",
                                      ledger=ledger)
    assert durable.final_output == plain.final_output == "seen 1 item(s)"
    plain_key, durable_key = (r.get("prompt_cache_key") for r in fake.requests)
    if cls is CachingResponsesModel:
        assert str(plain_key).startswith("agents-sdk:run:")
        assert str(durable_key).startswith("agents-sdk:run:")
    else:  # not an official endpoint: the SDK adds no key, and neither do we
        assert plain_key is None and durable_key is None
    assert set(fake.requests[0]) == set(fake.requests[1])


class FailingStream(Model):
    """Streams a created event, then a failed one, then would go on: the runner stops reading
    at the failure. Notes which task closed the stream."""

    def __init__(self) -> None:
        self.closed_in: list[asyncio.Task[Any] | None] = []

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise AssertionError("streamed runs only")

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        base: dict[str, Any] = dict(id="resp_f", created_at=0.0, model="fake", object="response",
                                    parallel_tool_calls=True, tool_choice="auto", tools=[],
                                    output=[])
        try:
            yield ResponseCreatedEvent(type="response.created", sequence_number=0,
                                       response=Response(**base))
            yield ResponseFailedEvent(type="response.failed", sequence_number=1,
                                      response=Response(**base, status="failed"))
            yield ResponseCreatedEvent(type="response.created", sequence_number=2,
                                       response=Response(**base))
        finally:
            self.closed_in.append(asyncio.current_task())


@pytest.mark.parametrize("durable", [False, True])
async def test_a_stream_the_runner_stops_reading_is_closed_in_its_task(
        durable: bool, ledger: Ledger) -> None:
    model = FailingStream()
    agent = Agent(name="s", model=model)
    if durable:
        streamed = DurableRunner.run_streamed(agent, "go", run_id="sclose", ledger=ledger)
    else:
        streamed = Runner.run_streamed(agent, "go")
    with pytest.raises(ModelBehaviorError):
        async for _ in streamed.stream_events():
            pass
    # Closed by the run loop as it stopped, not later by the event loop's finaliser.
    assert model.closed_in == [streamed.run_loop_task]


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_retried_model_call_keeps_its_step_key(
        streamed: bool, ledger: Ledger, endpoint: tuple[FakeResponses, str]) -> None:
    fake, url = endpoint
    settings = ModelSettings(retry=ModelRetrySettings(
        max_retries=2, backoff={"initial_delay": 0.0, "max_delay": 0.0, "jitter": False},
        policy=retry_policies.http_status([500])))

    def agent() -> Agent[Any]:
        return responses_agent(url).clone(model_settings=settings)

    async def run() -> Any:
        if not streamed:
            return (await DurableRunner.run(agent(), "hi", run_id="retry", ledger=ledger)
                    ).final_output
        result = DurableRunner.run_streamed(agent(), "hi", run_id="retry", ledger=ledger)
        async for _ in result.stream_events():
            pass
        return result.final_output

    fake.fail_next = 1  # a transient 500, retried by the SDK
    first = await run()
    assert len(fake.requests) == 2 and first == "seen 1 item(s)"
    assert [s.key for s in ledger.steps("retry")] == [
        "llm:desk:stream#1" if streamed else "llm:desk#1"]
    again = await run()  # started again: the answer the retry got, not a new request
    assert again == first and len(fake.requests) == 2


class LooseItemModel(Model):
    """Answers with a message the way the openai client builds one from a server's JSON: not
    validated, a required field missing. The SDK takes it as it is."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.calls += 1
        item = construct_type(type_=ResponseOutputItem, value={
            "type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "loose"}]})  # no "annotations"
        return ModelResponse(output=[item], usage=Usage(requests=1), response_id="resp_1")

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise AssertionError("not streamed")
        yield


async def test_an_item_openai_types_reject_but_the_sdk_takes_replays_as_it_was(
        ledger: Ledger) -> None:
    plain = await Runner.run(Agent(name="l", model=LooseItemModel()), "go")
    for _ in range(2):
        model = LooseItemModel()
        result = await DurableRunner.run(Agent(name="l", model=model), "go", run_id="loose",
                                         ledger=ledger)
        assert result.final_output == plain.final_output == "loose"
        assert [type(i) for i in result.raw_responses[0].output] == [ResponseOutputMessage]
    assert model.calls == 0  # the second run replayed the recorded answer


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class RaisingModel(LooseItemModel):
    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise Unprintable()


async def test_an_error_whose_text_cannot_be_read_still_ends_the_run(ledger: Ledger) -> None:
    with pytest.raises(Unprintable):
        await DurableRunner.run(Agent(name="u", model=RaisingModel()), "go", run_id="unp",
                                ledger=ledger)
    run = ledger.get_run("unp")
    assert run is not None and run.status == RunStatus.FAILED
    assert run.last_error.startswith("Unprintable: ")


async def test_a_recorded_sdk_user_error_replays_as_itself(ledger: Ledger) -> None:
    calls: list[int] = []

    @function_tool(failure_error_function=None)
    def strict(order: int) -> str:
        """Refuses."""
        calls.append(order)
        raise UserError(f"order {order} is not yours")

    def agent() -> Agent[Any]:
        def script(items: list[dict[str, Any]]) -> list[Any]:
            return [call_tool("strict", order=4)]
        return Agent(name="s", tools=[strict], model=ScriptedModel("s", script))

    with pytest.raises(UserError) as plain:
        await Runner.run(agent(), "go")
    for _ in range(2):  # live, then replayed from the record
        with pytest.raises(UserError) as durable:
            await DurableRunner.run(agent(), "go", run_id="ue", ledger=ledger)
        assert str(durable.value) == str(plain.value)
        assert type(durable.value.__cause__) is type(plain.value.__cause__)
        assert str(durable.value.__cause__) == str(plain.value.__cause__)
    assert calls == [4, 4]  # the plain run, the live durable run; the replay ran nothing


def one_tool_agent(tool: Any) -> Agent[Any]:
    def script(items: list[dict[str, Any]]) -> list[Any]:
        seen = [i for i in items if i.get("type") == "function_call_output"]
        return [call_tool(tool.name)] if not seen else [say("tool said " + str(seen[0]["output"]))]
    return Agent(name="t", tools=[tool], model=ScriptedModel("t", script))


async def test_the_sdks_codex_tool_result_is_recorded_and_replayed(ledger: Ledger) -> None:
    calls: list[int] = []

    @function_tool
    def codex() -> CodexToolResult:
        """Ask Codex."""
        calls.append(1)
        return CodexToolResult(thread_id="th_1", response="patched",
                               usage=CodexUsage(input_tokens=3, cached_input_tokens=0,
                                                output_tokens=2))

    plain = await Runner.run(one_tool_agent(codex), "go")
    for _ in range(2):
        result = await DurableRunner.run(one_tool_agent(codex), "go", run_id="codex",
                                         ledger=ledger)
        assert result.final_output == plain.final_output
        (output,) = [i.output for i in result.new_items if i.type == "tool_call_output_item"]
        assert output == CodexToolResult("th_1", "patched", CodexUsage(3, 0, 2))
    assert calls == [1, 1]


async def test_a_cyclic_tool_output_ends_as_a_recorded_failure(ledger: Ledger) -> None:
    calls: list[int] = []

    @function_tool(failure_error_function=None)
    def loop() -> Any:
        """Returns a list that holds itself."""
        calls.append(1)
        out: list[Any] = []
        out.append(out)
        return out

    for _ in range(2):
        with pytest.raises(UserError) as caught:
            await DurableRunner.run(one_tool_agent(loop), "go", run_id="cyc", ledger=ledger)
        assert not isinstance(caught.value.__cause__, RecursionError)
    assert calls == [1]  # the second run raised the recorded failure
    assert {s.status for s in ledger.steps("cyc")} <= {"completed", "failed"}


class Connection:
    """A context value that is not JSON."""


async def test_an_approval_whose_state_cannot_be_saved_returns_the_interrupted_result(
        ledger: Ledger, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AL_EFFECTS", str(tmp_path / "effects"))
    context = {"db": Connection()}
    plain = await Runner.run(agent_for("approval"), "go", context=context)
    durable = await DurableRunner.run(agent_for("approval"), "go", run_id="unsaved",
                                      ledger=ledger, context=context)
    assert [i.name for i in durable.interruptions] == [i.name for i in plain.interruptions]
    assert len(durable.interruptions) == 1
    run = ledger.get_run("unsaved")
    assert run is not None and run.status == RunStatus.FAILED
    assert "cannot be saved" in run.last_error
    assert ledger.pending_approvals("unsaved") == []  # no request that could never resume


@dataclasses.dataclass
class Receipt:
    number: int


async def test_an_unknown_tool_output_type_says_how_to_register_it(ledger: Ledger) -> None:
    @function_tool(failure_error_function=None)
    def receipt() -> Receipt:
        """Make a receipt."""
        return Receipt(7)

    with pytest.raises(UserError, match=r"ledger\.codec\.register_dataclass\(Receipt\)"):
        await DurableRunner.run(one_tool_agent(receipt), "go", run_id="rcpt", ledger=ledger)
    ledger.codec.register_dataclass(Receipt)
    result = await DurableRunner.run(one_tool_agent(receipt), "go", run_id="rcpt2",
                                     ledger=ledger)
    assert result.final_output == "tool said Receipt(number=7)"
