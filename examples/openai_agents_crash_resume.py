"""An OpenAI Agents SDK run killed in the middle of charging a card, restarted, charged once.

    pip install -e '.[openai-agents]'
    python examples/openai_agents_crash_resume.py

A triage agent hands off to a billing agent whose ``charge_card`` tool calls a payment API.
The first child process is killed with SIGKILL right after the payment API accepted the charge
and before the step's outcome was recorded: the worst moment. The second process starts the
same run id: the model calls and the handoff are answered from their records, and the in-doubt
charge runs again with the same idempotency key, which the payment API (like Stripe's) uses to
drop the duplicate. No API key and no Redis to install: the models are scripted (they answer
from what they have seen) and the ledger starts its embedded Redis in ./.agentledger/.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

RUN_ID = "refund-desk-42"
HERE = Path(".agentledger")
PAYMENTS = HERE / "demo-payments.jsonl"  # the "payment API": one line per accepted charge
EXECUTED = HERE / "demo-oa-executed.jsonl"  # what each process executed live, for the report


def log_executed(what: str) -> None:
    with EXECUTED.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "what": what}) + "\n")


def payment_api_charge(order: int, amount: int, idempotency_key: str) -> bool:
    """Charges once per idempotency key, as real payment APIs do."""
    seen = ({json.loads(line)["key"] for line in PAYMENTS.read_text().splitlines()}
            if PAYMENTS.exists() else set())
    if idempotency_key in seen:
        return False
    with PAYMENTS.open("a") as f:
        f.write(json.dumps({"order": order, "amount": amount, "key": idempotency_key}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def build_agents() -> Any:
    from agents import Agent, ModelResponse, Usage, function_tool, handoff
    from agents.models.interface import Model
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    import agentledger

    @function_tool
    def charge_card(order: int, amount: int) -> str:
        """Charge the customer's card for an order."""
        key = agentledger.current_idempotency_key() or "none"
        charged = payment_api_charge(order, amount, key)
        log_executed(f"charge_card(order={order}, amount={amount})"
                     + ("" if charged else " - duplicate dropped by the payment API"))
        if os.environ.get("DEMO_CRASH") == "1":
            os.kill(os.getpid(), signal.SIGKILL)  # the charge went through; its record did not
        return f"charged {amount} EUR for order {order}"

    def tool_call(name: str, **args: Any) -> ResponseFunctionToolCall:
        return ResponseFunctionToolCall(type="function_call", name=name, arguments=json.dumps(args),
                                        call_id=f"call_{uuid.uuid4().hex[:10]}")

    def message(text: str) -> ResponseOutputMessage:
        return ResponseOutputMessage(type="message", role="assistant", status="completed",
                                     id=f"msg_{uuid.uuid4().hex[:10]}",
                                     content=[ResponseOutputText(type="output_text", text=text,
                                                                 annotations=[])])

    class ScriptedModel(Model):
        """Answers from its input: what it says depends on the tool results it has seen."""

        def __init__(self, role: str) -> None:
            self.role = role

        async def get_response(self, system_instructions: Any, input: Any, *args: Any,
                               **kwargs: Any) -> ModelResponse:
            log_executed(f"model call ({self.role})")
            items = [i if isinstance(i, dict) else i.model_dump() for i in input]
            results = [str(i.get("output")) for i in items if i.get("type") == "function_call_output"]
            if self.role == "triage":
                out: list[Any] = [tool_call("transfer_to_billing")]
            elif not any(r.startswith("charged") for r in results):
                out = [tool_call("charge_card", order=42, amount=30)]
            else:
                out = [message(f"Done: {results[-1]}.")]
            return ModelResponse(output=out, usage=Usage(requests=1), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("this demo does not stream")

    billing = Agent(name="billing", instructions="Charge the order.", tools=[charge_card],
                    model=ScriptedModel("billing"))
    return Agent(name="triage", instructions="Route the customer.",
                 handoffs=[handoff(billing)], model=ScriptedModel("triage"))


async def child() -> None:
    from agents import set_tracing_disabled

    from agentledger import Ledger
    from agentledger.openai_agents import DurableRunner

    set_tracing_disabled(True)
    ledger = Ledger.from_url()  # AGENTLEDGER_URL, else the embedded Redis
    result = await DurableRunner.run(build_agents(), "Please charge order 42", run_id=RUN_ID,
                                     ledger=ledger)
    print(f"  final output: {result.final_output}")
    await ledger.aclose()


def main() -> int:
    from agentledger import Ledger

    HERE.mkdir(exist_ok=True)
    ledger = Ledger.from_url()
    ledger.delete_run(RUN_ID)  # start the demo afresh
    for f in (PAYMENTS, EXECUTED):
        f.unlink(missing_ok=True)
    env = {**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"}
    me = [sys.executable, __file__, "--child"]

    print("1) first process: runs until the card is charged, then is killed (SIGKILL)")
    first = subprocess.run(me, env={**env, "DEMO_CRASH": "1"})
    print(f"   exit status {first.returncode} (-9: killed by SIGKILL)")
    print("2) second process: same run id")
    second = subprocess.run(me, env=env)
    if second.returncode != 0:
        print("   the second process failed")
        return 1

    print("\nexecuted live, by process:")
    for line in EXECUTED.read_text().splitlines():
        entry = json.loads(line)
        print(f"  pid {entry['pid']}: {entry['what']}")
    print("\nsteps of the run:")
    for s in ledger.steps(RUN_ID):
        how = f"replayed {s.replays}x" if s.replays else "not replayed"
        print(f"  {s.kind.value:<5} {s.name:<20} attempts {s.attempts}  {how}")
    charges = PAYMENTS.read_text().splitlines()
    print(f"\ncharges accepted by the payment API: {len(charges)} (the card was charged once)")
    ledger.close()
    return 0 if len(charges) == 1 else 1


if __name__ == "__main__":
    if "--child" in sys.argv:
        asyncio.run(child())
    else:
        sys.exit(main())
