"""Run records: status, TTL, listing, leases and fencing (guarantee 4), delete and gc."""

from __future__ import annotations

import time

import pytest
import redis

import agentledger
from agentledger import FencedOutError, Ledger, RunBusyError, RunStatus, StepCall


def test_status_times_counts_and_ttl(ledger: Ledger, redis_url: str) -> None:
    @agentledger.step
    def ok() -> int:
        return 1

    with ledger.run("done", kind="test"):
        ok()
        ok()
    with pytest.raises(RuntimeError), ledger.run("broken"):
        ok()
        raise RuntimeError("model refused")
    done, broken = ledger.get_run("done"), ledger.get_run("broken")
    assert done is not None and broken is not None
    assert (done.status, done.kind, done.steps_total, done.steps_done) == ("completed", "test", 2, 2)
    assert done.created <= done.updated == done.ended and done.owner == ""
    assert broken.status == RunStatus.FAILED and broken.last_error == "RuntimeError: model refused"
    assert 0 < done.ttl_ms <= 7 * 24 * 3600 * 1000
    client = redis.Redis.from_url(redis_url)
    assert client.pttl(ledger.keys("done").steps) > 0
    # Running again keeps the run: its keys lose the TTL until it ends again.
    session = ledger.open_run("done")
    assert client.pttl(ledger.keys("done").steps) == -1
    session.finish(RunStatus.COMPLETED)
    assert [r.run_id for r in ledger.list_runs(status="failed")] == ["broken"]
    assert {r.run_id for r in ledger.list_runs()} == {"done", "broken"}
    assert ledger.get_run("never") is None


def test_a_live_run_is_busy_for_others(ledger: Ledger) -> None:
    holder = ledger.open_run("r")
    with pytest.raises(RunBusyError, match="is held by"):
        ledger.open_run("r", on_busy="fail")
    with pytest.raises(RunBusyError):
        ledger.open_run("r", on_busy="wait", wait_timeout_s=0.3)
    holder.finish(RunStatus.COMPLETED)
    ledger.open_run("r", on_busy="fail").finish(RunStatus.COMPLETED)


def test_a_frozen_owner_is_taken_over_after_its_lease_and_fenced_out(redis_url: str,
                                                                       prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, lease_ms=300)
    old = ledger.open_run("r")
    old.stop_renewing()  # a frozen process: it stops renewing its lease
    started = old.begin(StepCall(kind="tool", name="charge", inputs={"amount": 5}))
    t0 = time.monotonic()
    new = ledger.open_run("r", on_busy="wait")  # waits for the lease to expire
    assert time.monotonic() - t0 >= 0.1
    assert new.fence > old.fence
    with pytest.raises(FencedOutError):
        old.record(started, "charged")  # the stale writer is refused
    with pytest.raises(FencedOutError):
        old.begin(StepCall(kind="tool", name="refund", inputs={}))
    # The new owner sees the old attempt as in doubt and re-runs it (policy rerun).
    again = new.begin(StepCall(kind="tool", name="charge", inputs={"amount": 5}))
    assert not again.replayed and again.attempt == 2
    assert again.idempotency_key == started.idempotency_key
    new.record(again, "charged")
    new.finish(RunStatus.COMPLETED)
    (rec,) = ledger.steps("r")
    assert (rec.status, rec.attempts, rec.fence) == ("completed", 2, new.fence)
    assert not old.finish(RunStatus.FAILED, error=RuntimeError("late"))  # fenced: no effect
    run = ledger.get_run("r")
    assert run is not None and run.status == RunStatus.COMPLETED
    ledger.close()


def test_takeover_fences_a_live_owner(ledger: Ledger) -> None:
    old = ledger.open_run("r")
    new = ledger.open_run("r", on_busy="takeover")
    with pytest.raises(FencedOutError):
        old.call(StepCall(kind="step", name="x"), lambda: 1)
    assert new.call(StepCall(kind="step", name="x"), lambda: 2) == 2
    new.finish(RunStatus.COMPLETED)


def test_stalled_runs_are_listed(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, lease_ms=150)
    s = ledger.open_run("crashed")
    s.stop_renewing()
    time.sleep(0.3)
    assert [r.run_id for r in ledger.list_runs(status="stalled")] == ["crashed"]
    ledger.close()


def test_delete_removes_every_key_and_gc_drops_expired(ledger: Ledger, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with ledger.run("r"):
        agentledger.step(lambda: 1)()
    extra = ledger.keys("r").extra("adapter:state")
    client.set(extra, "x")
    ledger.track_key("r", extra)
    assert ledger.delete_run("r") == 4  # run, steps, key set, the adapter's key
    assert client.exists(extra) == 0 and ledger.get_run("r") is None
    assert ledger.list_runs() == []

    with ledger.run("short"):
        pass
    client.pexpire(ledger.keys("short").run, 1)
    time.sleep(0.05)
    assert ledger.gc() == 1
    assert client.zcard(f"{ledger.prefix}:runs") == 0


def test_ended_run_expires_its_adapter_keys_too(ledger: Ledger, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    extra = ledger.keys("r").extra("adapter:state")
    with ledger.run("r"):
        client.set(extra, "x")
        ledger.track_key("r", extra)
    assert client.pttl(extra) > 0


def test_bad_run_ids_are_refused(ledger: Ledger) -> None:
    for bad in ["", "a{b}", "x" * 300]:
        with pytest.raises(ValueError):
            ledger.open_run(bad)
    with pytest.raises(TypeError):
        ledger.open_run(42)  # type: ignore[arg-type]


async def test_async_run_lifecycle(ledger: Ledger) -> None:
    async with ledger.arun("a") as s:
        assert agentledger.current_run() is s
        await s.acall(StepCall(kind="step", name="x"), _async_value)
    assert agentledger.current_run() is None
    run = await ledger.aget_run("a")
    assert run is not None and run.status == "completed"
    assert [r.run_id for r in await ledger.alist_runs()] == ["a"]
    assert len(await ledger.asteps("a")) == 1
    assert await ledger.adelete_run("a") == 2
    assert await ledger.agc() == 0
    await ledger.aclose()


async def _async_value() -> int:
    return 7


def test_a_held_lease_is_renewed_past_its_length(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix, lease_ms=300)
    held = [ledger.open_run(f"r{i}") for i in range(3)]
    time.sleep(1.2)  # four lease lengths
    for i in range(3):
        with pytest.raises(RunBusyError):
            ledger.open_run(f"r{i}", on_busy="fail")
    for s in held:
        s.finish(RunStatus.COMPLETED)
    time.sleep(0.3)
    assert ledger._renewer._thread is None  # the renewer stops when no run is held
    ledger.close()


def test_adapter_blobs_are_fenced_and_go_with_the_run(ledger: Ledger, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    old = ledger.open_run("r")
    old.put_blob("state", b'{"turn": 1}')
    assert old.get_blob("state") == b'{"turn": 1}'
    new = ledger.open_run("r", on_busy="takeover")
    with pytest.raises(FencedOutError):
        old.put_blob("state", b'{"turn": 99}')
    assert new.get_blob("state") == b'{"turn": 1}'
    new.put_blob("state", "two")
    new.finish(RunStatus.COMPLETED)
    assert client.pttl(ledger.keys("r").extra("state")) > 0  # expires with the run
    assert ledger.delete_run("r") == 3  # run, key set, the blob (no steps were recorded)
    assert client.exists(ledger.keys("r").extra("state")) == 0


async def test_adapter_blobs_async(ledger: Ledger) -> None:
    async with ledger.arun("a") as s:
        await s.aput_blob("state", "x")
        assert await s.aget_blob("state") == b"x"
        await s.aput_blob("state", None)
        assert await s.aget_blob("state") is None
    await ledger.aclose()
