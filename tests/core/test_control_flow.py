"""Issue 8 item 2: the ledger's own control flow (waiting for a person, a lost lease, Redis
unreachable, cancellation, KeyboardInterrupt) is never recorded as a step's outcome; an approval
asked inside a step's body works, and the effect after it happens once."""

from __future__ import annotations

import asyncio
import io

import pytest

import agentledger
from agentledger import (
    ApprovalPending,
    FencedOutError,
    Ledger,
    LedgerUnavailableError,
    RunStatus,
    StepCall,
)
from agentledger._cli import main as cli


@pytest.mark.parametrize("decide_with", ["api", "cli"])
def test_an_approval_inside_a_step_waits_and_the_effect_after_it_happens_once(
        ledger: Ledger, redis_url: str, prefix: str, decide_with: str) -> None:
    shipped: list[str] = []

    @agentledger.step(in_doubt="fail")  # a suspended step is not in doubt, whatever its policy
    def ship(order: str) -> str:
        decision = agentledger.approval("ship?", {"order": order})
        if not decision.approved:
            return "held"
        shipped.append(order)
        return f"shipped {order}"

    with pytest.raises(ApprovalPending), ledger.run("r"):
        ship("42")
    run = ledger.get_run("r")
    assert run is not None and run.status == RunStatus.WAITING
    (pending,) = ledger.pending_approvals("r")
    assert pending.name == "ship?" and pending.payload == {"order": "42"}
    assert shipped == []

    if decide_with == "api":
        ledger.decide("r", approved=True, by="ops")
    else:
        out = io.StringIO()
        assert cli(["--url", redis_url, "--prefix", prefix, "approve", "r", "--by", "ops"], out) == 0

    for _ in range(2):  # the run continues, then replays
        with ledger.run("r"):
            assert ship("42") == "shipped 42"
    assert shipped == ["42"]
    run = ledger.get_run("r")
    assert run is not None and run.status == RunStatus.COMPLETED
    statuses = {s.name: s.status for s in ledger.steps("r")}
    assert statuses == {"ship?": "completed", ship.__qualname__: "completed"}


async def test_an_async_approval_inside_an_async_step(ledger: Ledger) -> None:
    shipped: list[str] = []

    @agentledger.step
    async def ship(order: str) -> str:
        decision = await agentledger.aapproval("ship?", order)
        shipped.append(order)
        return f"{decision.by} shipped {order}"

    with pytest.raises(ApprovalPending):
        async with ledger.arun("r"):
            await ship("7")
    await ledger.adecide("r", approved=True, by="ana")
    for _ in range(2):
        async with ledger.arun("r"):
            assert await ship("7") == "ana shipped 7"
    assert shipped == ["7"]
    await ledger.aclose()


@pytest.mark.parametrize("signal", [
    LedgerUnavailableError("Redis unreachable"), FencedOutError("taken over"),
    KeyboardInterrupt(), asyncio.CancelledError(),
])
def test_control_flow_leaves_the_step_in_doubt_not_failed(ledger: Ledger,
                                                          signal: BaseException) -> None:
    calls = []

    @agentledger.step  # in doubt -> rerun (the default)
    def effect() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise signal
        return "done"

    with pytest.raises(type(signal)), ledger.run("r"):
        effect()
    (rec,) = ledger.steps("r")
    assert rec.status == "running"  # no outcome recorded: in doubt
    with ledger.run("r"):
        assert effect() == "done"
    assert len(calls) == 2


def test_an_adapter_recording_a_cancellation_records_nothing(ledger: Ledger) -> None:
    """What an adapter does with ``except BaseException as e: session.record(start, error=e)``."""
    with ledger.run("r") as s:
        start = s.begin(StepCall(kind="tool", name="t", inputs={}))
        s.record(start, error=asyncio.CancelledError())
        start2 = s.begin(StepCall(kind="tool", name="u", inputs={}))
        s.record(start2, error=ApprovalPending("r", "approval:x#1"))
    assert [r.status for r in ledger.steps("r")] == ["running", "retry"]
