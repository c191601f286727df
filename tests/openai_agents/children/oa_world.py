"""Agents, tools and scripted fake models shared by the OpenAI Agents tests and children.

The fake model picks its answer from its INPUT (which tool results it has already seen),
never from a cursor: a replayed run skips model calls. Tool call ids are random, as a real
model's are, so a replay only lines up if the recorded response is what comes back.
Tools append "<tool> <idempotency key> <arguments>" to the file named by ``AL_EFFECTS``;
``AL_KILL_IN_TOOL=<tool>`` makes that tool SIGKILL its process right after its first effect.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agents import (
    Agent,
    ModelResponse,
    ModelSettings,
    RunContextWrapper,
    Usage,
    function_tool,
    handoff,
    set_tracing_disabled,
)
from agents.models.interface import Model
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseCreatedEvent,
    ResponseFunctionToolCall,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
)

import agentledger

set_tracing_disabled(True)

Script = Callable[[list[dict[str, Any]]], list[Any]]


# ---- effects -----------------------------------------------------------------------------
def effects_path() -> Path:
    return Path(os.environ.get("AL_EFFECTS", "/tmp/agentledger-oa-effects.txt"))


def effect(tool: str, args: Any) -> None:
    path = effects_path()
    before = path.read_text().count(f"{tool} ") if path.exists() else 0
    ik = agentledger.current_idempotency_key() or "-"
    with path.open("a") as f:
        f.write(f"{tool} {ik} {json.dumps(args, sort_keys=True)}\n")
        f.flush()
        os.fsync(f.fileno())
    if os.environ.get("AL_KILL_IN_TOOL") == tool and before == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def read_effects(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split(" ", 2)[:2]) for line in path.read_text().splitlines()]  # type: ignore[misc]


def model_calls_path() -> Path | None:
    p = os.environ.get("AL_MODEL_CALLS")
    return Path(p) if p else None


# ---- the fake model ----------------------------------------------------------------------
def call(name: str, **args: Any) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(type="function_call", name=name,
                                    arguments=json.dumps(args), call_id=f"call_{uuid.uuid4().hex[:12]}",
                                    id=f"fc_{uuid.uuid4().hex[:12]}", status="completed")


def say(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(type="message", role="assistant", status="completed",
                                 id=f"msg_{uuid.uuid4().hex[:12]}",
                                 content=[ResponseOutputText(type="output_text", text=text,
                                                             annotations=[])])


def as_items(input: Any) -> list[dict[str, Any]]:
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    return [i if isinstance(i, dict) else i.model_dump(exclude_unset=True) for i in input]


def outputs(items: list[dict[str, Any]]) -> list[str]:
    """The tool results the model has seen, in order."""
    return [str(i.get("output")) for i in items if i.get("type") == "function_call_output"]


class ScriptedModel(Model):
    """Answers with ``script(input items)``; counts its live calls in ``AL_MODEL_CALLS``."""

    def __init__(self, name: str, script: Script) -> None:
        self.name = name
        self.script = script
        self.inputs: list[list[dict[str, Any]]] = []

    def _answer(self, input: Any) -> list[Any]:
        items = as_items(input)
        self.inputs.append(items)
        p = model_calls_path()
        if p is not None:
            with p.open("a") as f:
                f.write(self.name + "\n")
        return self.script(items)

    async def get_response(self, system_instructions: Any, input: Any, model_settings: Any,
                           tools: Any, output_schema: Any, handoffs: Any, tracing: Any, *,
                           previous_response_id: Any, conversation_id: Any, prompt: Any
                           ) -> ModelResponse:
        return ModelResponse(output=self._answer(input), usage=Usage(requests=1),
                             response_id=f"resp_{uuid.uuid4().hex[:8]}")

    async def stream_response(self, system_instructions: Any, input: Any, model_settings: Any,
                              tools: Any, output_schema: Any, handoffs: Any, tracing: Any, *,
                              previous_response_id: Any, conversation_id: Any, prompt: Any
                              ) -> AsyncIterator[Any]:
        out = self._answer(input)
        rid = f"resp_{uuid.uuid4().hex[:8]}"
        base = dict(id=rid, created_at=0.0, model="fake", object="response",
                    parallel_tool_calls=True, tool_choice="auto", tools=[])
        seq = 0
        yield ResponseCreatedEvent(type="response.created", sequence_number=seq,
                                   response=Response(output=[], **base))
        for index, item in enumerate(out):
            seq += 1
            yield ResponseOutputItemAddedEvent(type="response.output_item.added", item=item,
                                               output_index=index, sequence_number=seq)
            if isinstance(item, ResponseOutputMessage):
                text = item.content[0].text  # type: ignore[union-attr]
                seq += 1
                yield ResponseContentPartAddedEvent(
                    type="response.content_part.added", item_id=item.id, output_index=index,
                    content_index=0, sequence_number=seq,
                    part=ResponseOutputText(type="output_text", text="", annotations=[]))
                for word in text.split(" "):
                    seq += 1
                    yield ResponseTextDeltaEvent(type="response.output_text.delta",
                                                 item_id=item.id, output_index=index,
                                                 content_index=0, delta=word + " ",
                                                 sequence_number=seq, logprobs=[])
            seq += 1
            yield ResponseOutputItemDoneEvent(type="response.output_item.done", item=item,
                                              output_index=index, sequence_number=seq)
        seq += 1
        yield ResponseCompletedEvent(type="response.completed", sequence_number=seq,
                                     response=Response(output=out, **base))


# ---- tools -------------------------------------------------------------------------------
@function_tool
def reserve(item: str) -> str:
    """Reserve an item in the warehouse."""
    effect("reserve", {"item": item})
    return f"reserved {item}"


@function_tool
async def charge_card(order: int, amount: int) -> str:
    """Charge the customer's card."""
    effect("charge_card", {"order": order, "amount": amount})
    return f"charged {amount} for order {order}"


@function_tool
def send_mail(to: str) -> str:
    """Send a mail."""
    effect("send_mail", {"to": to})
    return f"mailed {to}"


@function_tool
def flaky(order: int) -> str:
    """A tool that always fails."""
    effect("flaky", {"order": order})
    raise RuntimeError(f"warehouse down for order {order}")


@function_tool(needs_approval=True)
def refund(order: int, amount: int) -> str:
    """Refund an order (needs a person's approval)."""
    effect("refund", {"order": order, "amount": amount})
    return f"refunded {amount} for order {order}"


def redis_hook(where: str, n: int) -> None:
    """``AL_PAUSE_REDIS=<where>:<n>`` pauses writes on the redis-server at ``AL_REDIS_URL``
    there (the commands that arrive after it stay unapplied); ``AL_KILL_REDIS=<where>:<n>``
    SIGKILLs the redis-server whose pid is ``AL_REDIS_PID``. ``where``: tool (the bulk
    scenario's n-th store call, after its effect) or model (its call that saw n results)."""
    if os.environ.get("AL_PAUSE_REDIS") == f"{where}:{n}":
        import redis

        with redis.Redis.from_url(os.environ["AL_REDIS_URL"]) as r:
            r.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    if os.environ.get("AL_KILL_REDIS") == f"{where}:{n}":
        os.kill(int(os.environ["AL_REDIS_PID"]), signal.SIGKILL)


@function_tool
def store(part: int) -> str:
    """Store one part of a document (a big result)."""
    effect("store", {"part": part})
    redis_hook("tool", part)
    return f"stored part {part}: " + "x" * BULK_RESULT


# ---- scenarios ---------------------------------------------------------------------------
def _seq(items: list[dict[str, Any]]) -> list[Any]:
    seen = outputs(items)
    if not seen:
        return [call("reserve", item="book")]
    if len(seen) == 1:
        return [call("charge_card", order=42, amount=30)]
    return [say("done: " + "; ".join(seen))]


def _parallel(items: list[dict[str, Any]]) -> list[Any]:
    seen = outputs(items)
    if not seen:
        return [call("reserve", item="lamp"), call("charge_card", order=7, amount=12),
                call("send_mail", to="ann@example.com")]
    return [say("done: " + "; ".join(sorted(seen)))]


def _inner_billing(items: list[dict[str, Any]]) -> list[Any]:
    seen = outputs(items)
    if not seen:
        return [call("charge_card", order=9, amount=5)]
    return [say("billing says " + seen[0])]


def _outer(items: list[dict[str, Any]]) -> list[Any]:
    seen = outputs(items)
    if not seen:
        return [call("ask_billing", input="charge order 9")]
    if len(seen) == 1:
        return [call("send_mail", to="bob@example.com")]
    return [say("done: " + "; ".join(seen))]


def _triage(items: list[dict[str, Any]]) -> list[Any]:
    return [call("transfer_to_billing")]


def _billing(items: list[dict[str, Any]]) -> list[Any]:
    seen = [o for o in outputs(items) if o.startswith("charged")]
    if not seen:
        return [call("charge_card", order=42, amount=99)]
    return [say("billing done: " + seen[0])]


def _flaky(items: list[dict[str, Any]]) -> list[Any]:
    seen = outputs(items)
    if not seen:
        return [call("flaky", order=3)]
    return [say("tool said: " + seen[0])]


def _approval(items: list[dict[str, Any]]) -> list[Any]:
    seen = outputs(items)
    if not seen:
        return [call("reserve", item="chair")]
    if len(seen) == 1:
        return [call("refund", order=5, amount=70)]
    return [say("done: " + "; ".join(seen))]


BULK_PARTS = 8  # and the answer: 9 turns, within the SDK's default max_turns (10)
BULK_RESULT = 40_000  # characters per tool result: Redis is still busy when it is killed


def _bulk(items: list[dict[str, Any]]) -> list[Any]:
    n = len(outputs(items))
    redis_hook("model", n)
    return [call("store", part=n)] if n < BULK_PARTS else [say(f"stored {n} parts")]


def _loop(items: list[dict[str, Any]]) -> list[Any]:
    return [call("reserve", item=f"n{len(outputs(items))}")]


def agent_for(scenario: str) -> Agent[Any]:
    """The starting agent of a scenario (a fresh graph of objects each time)."""
    if scenario == "seq":
        return Agent(name="shop", instructions="sell", tools=[reserve, charge_card],
                     model=ScriptedModel("shop", _seq))
    if scenario == "parallel":
        return Agent(name="shop", instructions="sell", tools=[reserve, charge_card, send_mail],
                     model=ScriptedModel("shop", _parallel),
                     model_settings=ModelSettings(parallel_tool_calls=True))
    if scenario == "agent_tool":
        inner = Agent(name="billing", instructions="bill", tools=[charge_card],
                      model=ScriptedModel("billing", _inner_billing))
        return Agent(name="desk", instructions="help",
                     tools=[inner.as_tool(tool_name="ask_billing",
                                          tool_description="Ask billing"), send_mail],
                     model=ScriptedModel("desk", _outer))
    if scenario == "handoff":
        billing = Agent(name="billing", instructions="bill", tools=[charge_card],
                        model=ScriptedModel("billing", _billing))
        return Agent(name="triage", instructions="route",
                     handoffs=[handoff(billing, on_handoff=_on_handoff)],
                     model=ScriptedModel("triage", _triage))
    if scenario == "flaky":
        return Agent(name="shop", instructions="sell", tools=[flaky],
                     model=ScriptedModel("shop", _flaky))
    if scenario == "approval":
        return Agent(name="shop", instructions="sell", tools=[reserve, refund],
                     model=ScriptedModel("shop", _approval))
    if scenario == "bulk":
        return Agent(name="archive", instructions="store", tools=[store],
                     model=ScriptedModel("archive", _bulk))
    if scenario == "loop":
        return Agent(name="shop", instructions="sell", tools=[reserve],
                     model=ScriptedModel("shop", _loop))
    raise ValueError(f"unknown scenario {scenario!r}")


def _on_handoff(ctx: RunContextWrapper[Any]) -> None:
    effect("on_handoff", {})


# How many effects of each tool a clean run has.
EXPECTED: dict[str, dict[str, int]] = {
    "seq": {"reserve": 1, "charge_card": 1},
    "parallel": {"reserve": 1, "charge_card": 1, "send_mail": 1},
    "agent_tool": {"charge_card": 1, "send_mail": 1},
    "handoff": {"on_handoff": 1, "charge_card": 1},
    "stream": {"reserve": 1, "charge_card": 1},
    "approval": {"reserve": 1, "refund": 1},
}
