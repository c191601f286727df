"""Guarantee 7: a corrupt, truncated, oversized or unknown-version record gives a clear error
naming the key, and nothing else in the run is lost or touched."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentledger
from agentledger import (
    CorruptRecordError,
    Ledger,
    UnknownSchemaVersionError,
    UnsupportedTypeError,
)

CALLS: list[str] = []


@agentledger.step
def first() -> str:
    CALLS.append("first")
    return "one"


@agentledger.step
def second() -> dict[str, int]:
    CALLS.append("second")
    return {"n": 2}


@agentledger.step
def third() -> str:
    CALLS.append("third")
    return "three"


def recorded_run(ledger: Ledger, run_id: str) -> None:
    with ledger.run(run_id):
        first()
        second()
        third()


def snapshot(client: redis.Redis, key: str, skip: str) -> dict[bytes, bytes]:
    return {k: v for k, v in client.hgetall(key).items() if k != skip.encode()}


def valid_meta(client: redis.Redis, ledger: Ledger, run_id: str) -> bytes:
    return client.hget(ledger.keys(run_id).steps, "m:step:second#1")  # type: ignore[return-value]


bad_json = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.sampled_from([b"", b"{", b"[]", b"null", b"42", b'"v"', b"\xff\xfe"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_step_metadata_names_the_key_and_touches_nothing_else(
        ledger: Ledger, redis_url: str, data: st.DataObject) -> None:
    client = redis.Redis.from_url(redis_url)
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    recorded_run(ledger, run_id)
    good = valid_meta(client, ledger, run_id)
    kind = data.draw(st.sampled_from(["garbage", "truncated", "wrong-type", "unknown-version"]))
    if kind == "garbage":
        bad = data.draw(bad_json)
    elif kind == "truncated":
        bad = good[: data.draw(st.integers(0, len(good) - 1))]
    elif kind == "wrong-type":
        meta = json.loads(good)
        field = data.draw(st.sampled_from(["status", "attempts", "kind", "seq"]))
        meta[field] = data.draw(st.sampled_from([None, [], {"x": 1}, "bogus", -1.5]))
        bad = json.dumps(meta).encode()
    else:
        meta = json.loads(good)
        meta["v"] = data.draw(st.integers(2, 10**6))
        bad = json.dumps(meta).encode()
    steps_key = ledger.keys(run_id).steps
    client.hset(steps_key, "m:step:second#1", bad)
    others = snapshot(client, steps_key, "m:step:second#1")
    try:
        json.loads(bad)
        meta_ok = True
    except ValueError:
        meta_ok = False
    CALLS.clear()
    with ledger.run(run_id):
        assert first() == "one"  # replayed: an earlier record is unaffected
        try:
            second()
        except UnknownSchemaVersionError as e:
            assert kind == "unknown-version" and "m:step:second#1" in str(e)
            assert "Upgrade agentledger" in str(e)
        except CorruptRecordError as e:
            assert steps_key in e.key and "m:step:second#1" in e.key
        else:
            # Only a change that leaves a valid record may pass (e.g. seq -1.5 is refused).
            raise AssertionError(f"no error for {kind}: {bad!r} (json={meta_ok})")
    assert CALLS == []  # nothing re-executed
    assert client.hget(steps_key, "m:step:second#1") == bad  # the bad record is kept for a human
    assert snapshot(client, steps_key, "m:step:second#1") == {
        **others, **{k: v for k, v in client.hgetall(steps_key).items() if k.startswith(b"p:")}}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.one_of(bad_json, st.just(b'{"v":1,"ok":true}'), st.just(b'{"v":7,"ok":true,"value":1}'),
                     st.just(b'{"v":1,"ok":true,"value":{"$al":"pickle","v":"gASV"}}')))
def test_corrupt_outcome_names_the_key(ledger: Ledger, redis_url: str, bad: bytes) -> None:
    client = redis.Redis.from_url(redis_url)
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    recorded_run(ledger, run_id)
    steps_key = ledger.keys(run_id).steps
    client.hset(steps_key, "r:step:second#1", bad)
    CALLS.clear()
    with ledger.run(run_id):
        assert first() == "one"
        with pytest.raises((CorruptRecordError, UnsupportedTypeError)) as info:
            second()
        assert "r:step:second#1" in str(info.value)
        assert third() == "three"  # the rest of the run replays
    assert CALLS == []


def test_unknown_run_record_version_is_refused(ledger: Ledger, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    recorded_run(ledger, "r")
    client.hset(ledger.keys("r").run, "v", "9")
    with pytest.raises(UnknownSchemaVersionError, match=r":run.*version '9'"):
        ledger.get_run("r")
    with pytest.raises(UnknownSchemaVersionError):
        ledger.open_run("r")
    client.hset(ledger.keys("r").run, mapping={"v": "1", "steps_total": "many"})
    with pytest.raises(CorruptRecordError, match="steps_total"):
        ledger.get_run("r")


def test_a_never_unpickled_tag_is_refused(ledger: Ledger) -> None:
    with pytest.raises(UnsupportedTypeError, match="'pickle'"):
        ledger.codec.decode({"$al": "pickle", "v": "gASVAAAAAAAAAACMBG9zlIwGc3lzdGVtlJOUjAJpZJSFlFKULg=="})
