"""Issue 8 item 12: approval payloads obey max_payload_bytes; corrupt tagged values raise
CorruptRecordError naming the key (never a bare ValueError); a second opener of a completed run
with different inputs does not turn it into 'failed'."""

from __future__ import annotations

import json

import pytest
import redis

import agentledger
from agentledger import (
    CorruptRecordError,
    Ledger,
    NonDeterminismError,
    PayloadTooLargeError,
    RunStatus,
)


def test_an_approval_request_over_the_limit_is_refused_and_nothing_waits(
        redis_url: str, prefix: str) -> None:
    small = Ledger.from_url(redis_url, prefix=prefix, max_payload_bytes=10_000)
    try:
        with pytest.raises(PayloadTooLargeError, match=r"request payload of approval .*ship"), \
                small.run("r"):
            agentledger.approval("ship", {"blob": "x" * 20_000})
        assert small.steps("r") == []
        run = small.get_run("r")
        assert run is not None and run.status == RunStatus.FAILED
        # Within the limit it waits as usual.
        with pytest.raises(agentledger.ApprovalPending), small.run("r2"):
            agentledger.approval("ship", {"blob": "x" * 100})
        with pytest.raises(PayloadTooLargeError, match="the decision"):
            small.decide("r2", approved=True, payload={"edited": "y" * 20_000})
        assert small.pending_approvals("r2")[0].status == "waiting"  # nothing was decided
    finally:
        small.close()


@pytest.mark.parametrize("tagged", [
    {"$al": "decimal", "v": "not a number"},
    {"$al": "bytes", "v": "%%% not base64 %%%"},
    {"$al": "datetime", "v": "yesterday"},
    {"$al": "uuid", "v": 42},
    {"$al": "dict", "v": 5},
    {"$al": "int", "v": "zz"},
    {"$al": "tuple"},
])
def test_a_corrupt_tagged_value_is_a_corrupt_record_naming_the_key(
        ledger: Ledger, redis_url: str, prefix: str, tagged: dict[str, object]) -> None:
    @agentledger.step(name="quote")
    def quote() -> object:
        return "fine"

    with ledger.run("r"):
        quote()
    (rec,) = ledger.steps("r")
    client = redis.Redis.from_url(redis_url)
    steps_key = f"{prefix}:{{r}}:steps"
    client.hset(steps_key, f"r:{rec.key}", json.dumps({"v": 1, "ok": True, "value": [tagged]}))
    client.close()
    with pytest.raises(CorruptRecordError) as info, ledger.run("r"):
        quote()
    assert info.value.key == f"{steps_key} r:{rec.key}"
    assert not isinstance(info.value, ValueError)


def test_a_deeply_nested_record_is_a_corrupt_record_naming_the_key(
        ledger: Ledger, redis_url: str, prefix: str) -> None:
    @agentledger.step(name="quote")
    def quote() -> object:
        return "fine"

    with ledger.run("r"):
        quote()
    (rec,) = ledger.steps("r")
    client = redis.Redis.from_url(redis_url)
    steps_key = f"{prefix}:{{r}}:steps"
    deep = "[" * 5000 + "]" * 5000
    client.hset(steps_key, f"r:{rec.key}", '{"v":1,"ok":true,"value":' + deep + "}")
    client.close()
    with pytest.raises(CorruptRecordError) as info, ledger.run("r"):
        quote()
    assert info.value.key == f"{steps_key} r:{rec.key}"


def test_a_second_opener_with_other_inputs_leaves_a_completed_run_completed(
        ledger: Ledger) -> None:
    @agentledger.step
    def greet(name: str) -> str:
        return f"hello {name}"

    with ledger.run("r"):
        greet("ana")
    with pytest.raises(NonDeterminismError), ledger.run("r"):
        greet("bob")
    run = ledger.get_run("r")
    assert run is not None and run.status == RunStatus.COMPLETED
    assert run.ttl_ms > 0  # still expires like a completed run
    with ledger.run("r"):
        assert greet("ana") == "hello ana"


@pytest.mark.parametrize("data", [
    {"$al": "decimal", "v": "1.2.3"},
    {"$al": "bytes", "v": "%%% not base64 %%%"},
    {"$al": "float", "v": "many"},
    {"$al": "timedelta", "v": "long"},
])
def test_the_codec_itself_names_where_a_corrupt_value_was_read(data: dict[str, object]) -> None:
    with pytest.raises(CorruptRecordError, match="my-key") as info:
        agentledger.Codec().decode(data, "my-key")
    assert not isinstance(info.value, ValueError)
    deep: object = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(CorruptRecordError, match="nests deeper"):
        agentledger.Codec().decode(deep, "my-key")
