"""Guarantees 1, 5 and the codec's allow-list on a real Redis, in one process."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from pydantic import BaseModel

import agentledger
from agentledger import (
    Ledger,
    NonDeterminismError,
    PayloadTooLargeError,
    RecordedStepError,
    StepCall,
    UnsupportedTypeError,
)


class Quote(BaseModel):
    sku: str
    price: float


@dataclasses.dataclass
class Receipt:
    id: str
    at: dt.datetime


class PaymentDeclined(Exception):
    pass


def test_outside_a_run_a_step_is_a_plain_call() -> None:
    calls = []

    @agentledger.step
    def f(x: int) -> int:
        calls.append(agentledger.current_idempotency_key())
        return x + 1

    assert f(1) == 2 and calls == [None]


def test_replay_returns_recorded_values_with_their_types(ledger: Ledger) -> None:
    ledger.codec.register_pydantic(Quote)
    ledger.codec.register_dataclass(Receipt)
    calls: list[str] = []
    at = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)

    @agentledger.step
    def quote(sku: str) -> Quote:
        calls.append("quote")
        return Quote(sku=sku, price=9.5)

    @agentledger.step(name="receipt")
    def receipt() -> tuple[Receipt, bytes, set[int], dict[int, str]]:
        calls.append("receipt")
        return Receipt("r-1", at), b"\x00\xff", {1, 2}, {1: "one"}

    with ledger.run("r") as s:
        first = (quote("kb"), receipt())
        assert s.executed == 2
    with ledger.run("r") as s:
        second = (quote("kb"), receipt())
        assert (s.executed, s.replayed) == (0, 2)
    assert calls == ["quote", "receipt"]
    assert second == first
    assert type(second[0]) is Quote and type(second[1][0]) is Receipt


def test_recorded_errors_replay_with_their_type(ledger: Ledger) -> None:
    ledger.codec.register_error(PaymentDeclined)
    calls = []

    @agentledger.step
    def charge(kind: str) -> None:
        calls.append(kind)
        if kind == "value":
            raise ValueError("amount must be positive")
        if kind == "declined":
            raise PaymentDeclined("card declined")
        raise KeyError("unlisted")

    class Unlisted(Exception):
        pass

    @agentledger.step
    def unlisted() -> None:
        calls.append("unlisted")
        raise Unlisted("not on the allow-list")

    for _ in range(2):
        with ledger.run("r"):
            with pytest.raises(ValueError, match="amount must be positive"):
                charge("value")
            with pytest.raises(PaymentDeclined, match="card declined"):
                charge("declined")
            with pytest.raises((Unlisted, RecordedStepError)) as info:
                unlisted()
    assert calls == ["value", "declined", "unlisted"]
    assert isinstance(info.value, RecordedStepError)  # the replay: type name and text kept
    assert info.value.type_name.endswith("Unlisted") and "allow-list" in info.value.message


def test_changed_inputs_on_replay_raise_non_determinism(ledger: Ledger, redis_url: str,
                                                        prefix: str) -> None:
    @agentledger.step
    def prompt(text: str) -> str:
        return text.upper()

    with ledger.run("r"):
        prompt("summarise the order")
    with pytest.raises(NonDeterminismError) as info, ledger.run("r"):
        prompt("summarise the refund")
    assert "prompt#1" in str(info.value)
    assert "summarise the order" in info.value.recorded
    assert "summarise the refund" in info.value.new

    relaxed = Ledger.from_url(redis_url, prefix=prefix, on_mismatch="replay")
    with relaxed.run("r"):
        assert prompt("summarise the refund") == "SUMMARISE THE ORDER"
    relaxed.close()


def test_idempotency_keys_are_stable_per_step_and_distinct(ledger: Ledger) -> None:
    keys: list[str | None] = []

    @agentledger.step
    def send(to: str) -> None:
        keys.append(agentledger.current_idempotency_key())

    with ledger.run("r1"):
        send("a")
        send("b")
        with agentledger.scope("billing"):
            send("a")
    with ledger.run("r2"):
        send("a")
    assert len(set(keys)) == 4 and all(k and k.startswith("al-") for k in keys)
    assert [s.key for s in ledger.steps("r1")] == [
        "step:test_idempotency_keys_are_stable_per_step_and_distinct.<locals>.send#1",
        "step:test_idempotency_keys_are_stable_per_step_and_distinct.<locals>.send#2",
        "billing/step:test_idempotency_keys_are_stable_per_step_and_distinct.<locals>.send#1",
    ]
    assert [s.key for s in ledger.steps("r1", scope="billing")] == [
        "billing/step:test_idempotency_keys_are_stable_per_step_and_distinct.<locals>.send#1"]


def test_a_step_inside_a_step_is_part_of_its_body(ledger: Ledger) -> None:
    @agentledger.step
    def inner() -> int:
        return 1

    @agentledger.step
    def outer() -> int:
        return inner() + 1

    with ledger.run("r"):
        assert outer() == 2
    assert [s.name for s in ledger.steps("r")] == [outer.__qualname__]


async def test_async_steps_replay(ledger: Ledger) -> None:
    calls = []

    @agentledger.step
    async def fetch(n: int) -> list[int]:
        calls.append(n)
        return list(range(n))

    async with ledger.arun("r") as s:
        assert await fetch(3) == [0, 1, 2]
    async with ledger.arun("r") as s:
        assert await fetch(3) == [0, 1, 2]
        assert s.replayed == 1
    assert calls == [3]
    await ledger.aclose()


def test_unrecordable_result_is_a_clear_error_recorded_as_the_outcome(ledger: Ledger) -> None:
    class Opaque:
        pass

    calls = []

    @agentledger.step
    def make() -> Opaque:
        calls.append(1)
        return Opaque()

    for _ in range(2):
        with pytest.raises(UnsupportedTypeError, match="allow-list"), ledger.run("r"):
            make()
    assert calls == [1]


def test_oversized_outcome_is_refused_and_named(redis_url: str, prefix: str) -> None:
    small = Ledger.from_url(redis_url, prefix=prefix, max_payload_bytes=1000)

    @agentledger.step
    def big() -> str:
        return "x" * 5000

    @agentledger.step
    def fine() -> str:
        return "ok"

    with small.run("r"):
        with pytest.raises(PayloadTooLargeError, match=r"step:.*big#1.*over the limit of 1000"):
            big()
        assert fine() == "ok"
    assert [s.status for s in small.steps("r")] == ["failed", "completed"]
    small.close()


def test_session_step_protocol_for_adapters(ledger: Ledger) -> None:
    """What an adapter does: LLM calls without an intent record, tool calls keyed by id."""
    with ledger.run("r") as s:
        llm = s.begin(StepCall(kind="llm", name="gpt", inputs=[{"role": "user", "content": "hi"}],
                               intent=False))
        assert not llm.replayed
        s.record(llm, {"role": "assistant", "tool_calls": [{"id": "call_1"}]})
        tool = s.begin(StepCall(kind="tool", name="lookup", inputs={"q": 1}, call_id="call_1"))
        s.record(tool, "found")
    with ledger.run("r") as s:
        llm = s.begin(StepCall(kind="llm", name="gpt", inputs=[{"role": "user", "content": "hi"}],
                               intent=False))
        assert llm.replayed and s.result(llm)["tool_calls"][0]["id"] == "call_1"
        tool = s.begin(StepCall(kind="tool", name="lookup", inputs={"q": 1}, call_id="call_1"))
        assert tool.replayed and s.result(tool) == "found"
    recs = ledger.steps("r")
    assert [r.key for r in recs] == ["llm:gpt#1", "tool:lookup@call_1"]
    assert [r.attempts for r in recs] == [1, 1]


def test_parallel_threads_share_a_session(ledger: Ledger) -> None:
    """Threads running steps at once: the session's own connection serves one, the client the
    others; every step is recorded once and replays."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    calls: list[int] = []

    @agentledger.step
    def work(i: int) -> int:
        calls.append(i)
        return i * i

    def in_scope(i: int) -> int:
        with agentledger.scope(f"worker-{i}"):
            return work(i)

    for _ in range(2):
        with ledger.run("r"), ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(contextvars.copy_context().run, in_scope, i) for i in range(32)]
            assert [f.result() for f in futures] == [i * i for i in range(32)]
    assert sorted(calls) == list(range(32))
    assert len(ledger.steps("r")) == 32


async def test_concurrent_tasks_share_a_session(ledger: Ledger) -> None:
    import asyncio

    calls: list[int] = []

    @agentledger.step
    async def work(i: int) -> int:
        await asyncio.sleep(0.001)
        calls.append(i)
        return i + 100

    async def in_scope(i: int) -> int:
        with agentledger.scope(f"task-{i}"):
            return await work(i)

    for _ in range(2):
        async with ledger.arun("r"):
            assert await asyncio.gather(*(in_scope(i) for i in range(32))) == [i + 100 for i in range(32)]
    assert sorted(calls) == list(range(32))
    await ledger.aclose()


def test_a_retried_attempt_replays_the_first_attempts_steps(ledger: Ledger) -> None:
    calls: list[str] = []

    @agentledger.step
    def fetch() -> str:
        calls.append("fetch")
        return "data"

    @agentledger.step
    def flaky() -> str:
        calls.append("flaky")
        if calls.count("flaky") < 3:
            raise ConnectionError("try again")
        return "ok"

    def unit_of_work() -> str:  # what a framework retries, attempt after attempt
        assert fetch() == "data"
        return flaky()

    for _ in range(2):  # the second run replays everything
        with ledger.run("r") as s:
            for attempt in (1, 2, 3):
                with agentledger.restart_numbering(attempt):
                    try:
                        assert unit_of_work() == "ok"
                        break
                    except ConnectionError:
                        continue
            start = s.begin(StepCall(kind="tool", name="t", inputs={}))
            if not start.replayed:
                with s.executing(start):
                    assert agentledger.current_idempotency_key() == start.idempotency_key
                s.record(start, "done")
    assert calls == ["fetch", "flaky", "flaky", "flaky"]
    prefix = "step:test_a_retried_attempt_replays_the_first_attempts_steps.<locals>."
    assert [(r.key.removeprefix(prefix), r.status) for r in ledger.steps("r")] == [
        ("fetch#1", "completed"), ("flaky#1", "failed"), ("flaky#1.r2", "failed"),
        ("flaky#1.r3", "completed"), ("tool:t#1", "completed")]
