"""The run's end in one round trip: where every unacknowledged record is judged by Redis alone
(its refusal stops the batch), the finish goes with the barrier that reads them and is applied
only if they all were. A record whose reply this process still judges sends it the long way
(test_held_records.py: a kept reply rejected at the end leaves the run open). Records sent with
``expect=KEEP_UNLESS + tag`` keep their reply for the barrier unless it is that tag, which
refuses them and stops the batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.connection

from agentledger import Ledger, LedgerError, RunStatus, StepCall
from agentledger._replyoff import KEEP_UNLESS

APPEND = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"
NOBASE = "return {'NOBASE', ARGV[1]}"
FAIL = "return redis.error_reply('refused')"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], int]]:
    """How many times this process waited for Redis (a reply read after a write), on sync and
    asyncio connections alike."""
    count = [0]
    # A write marks what it went through: a sync connection, or an asyncio stream (records
    # from asyncio go to the stream directly, not through send_packed_command).
    send = redis.connection.AbstractConnection.send_packed_command
    write = asyncio.StreamWriter.write

    def counting_send(self: Any, *a: Any, **k: Any) -> Any:
        self._test_sent = True
        return send(self, *a, **k)

    def counting_write(self: Any, data: Any) -> None:
        self._test_sent = True
        write(self, data)

    def counted(marked: Any) -> None:
        if getattr(marked, "_test_sent", False):
            marked._test_sent = False
            count[0] += 1

    read = redis.connection.AbstractConnection.read_response
    aread = redis.asyncio.connection.AbstractConnection.read_response

    def counting_read(self: Any, *a: Any, **k: Any) -> Any:
        counted(self)
        return read(self, *a, **k)

    def counting_aread(self: Any, *a: Any, **k: Any) -> Any:
        counted(self._writer)
        return aread(self, *a, **k)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                        counting_send)
    monkeypatch.setattr(asyncio.StreamWriter, "write", counting_write)
    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", counting_read)
    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "read_response",
                        counting_aread)
    yield lambda: count[0]


def _ledger(redis_url: str, prefix: str) -> Ledger:
    # A long lease: the renewer (a third of it) never counts among the waits of a test.
    ledger = Ledger.from_url(redis_url, prefix=prefix, durability="async", lease_ms=600_000)
    ledger.register_scripts({"test.append": APPEND, "test.nobase": NOBASE, "test.fail": FAIL})
    return ledger


def _llm(i: int) -> StepCall:
    return StepCall(kind="llm", name="chat", inputs=i, intent=False)


def _in_index(ledger: Ledger, run_id: str) -> bool:
    return any(r.run_id == run_id for r in ledger.list_runs())


def test_the_finish_goes_with_the_barrier_in_one_round_trip(
        redis_url: str, prefix: str, waits: Callable[[], int]) -> None:
    ledger = _ledger(redis_url, prefix)
    try:
        session = ledger.open_run("r")
        for i in range(3):
            session.call(_llm(i), lambda i=i: f"answer {i}")
        assert session._hot.unacknowledged == 3
        before = waits()
        assert session.finish(RunStatus.COMPLETED)
        assert waits() - before == 1
        run = ledger.get_run("r")
        assert run is not None and run.status == "completed"
        assert len(ledger.steps("r")) == 3
        assert _in_index(ledger, "r")
    finally:
        ledger.close()


def test_afinish_goes_with_the_barrier_in_one_round_trip(
        redis_url: str, prefix: str, waits: Callable[[], int]) -> None:
    ledger = _ledger(redis_url, prefix)

    async def answer(i: int) -> str:
        return f"answer {i}"

    async def run() -> None:
        session = await ledger.aopen_run("r")
        for i in range(3):
            await session.acall(_llm(i), answer, i)
        before = waits()
        assert await session.afinish(RunStatus.COMPLETED)
        assert waits() - before == 1

    try:
        asyncio.run(run())
        run_record = ledger.get_run("r")
        assert run_record is not None and run_record.status == "completed"
        assert len(ledger.steps("r")) == 3
        assert _in_index(ledger, "r")
    finally:
        asyncio.run(ledger.aclose())
        ledger.close()


def test_a_record_refused_by_redis_keeps_the_finish_from_being_applied(
        redis_url: str, prefix: str, waits: Callable[[], int]) -> None:
    ledger = _ledger(redis_url, prefix)
    key = f"{prefix}:{{r}}:list"
    plain = redis.Redis.from_url(redis_url)
    try:
        session = ledger.open_run("r")
        session.call(_llm(1), lambda: "answer")
        session.send_script("test.fail", [key], [], lambda _r: None, expect="OK")
        session.send_script("test.append", [key], ["after"], lambda _r: None, expect="1")
        sent_with_barrier: list[str] = []
        call_after_batch = session._hot._call_after_batch

        def spy(name: str, *args: Any) -> Any:
            sent_with_barrier.append(name)
            return call_after_batch(name, *args)

        session._hot._call_after_batch = spy  # type: ignore[method-assign]
        before = waits()
        with pytest.raises(LedgerError, match="refused"):
            session.finish(RunStatus.COMPLETED)
        # It did go in one round trip with the barrier, and was not applied.
        assert waits() - before == 1 and sent_with_barrier == ["finish"]
        run = ledger.get_run("r")
        assert run is not None and run.status == "running"  # it resumes from its records
        assert len(ledger.steps("r")) == 1 and plain.llen(key) == 0
    finally:
        ledger.close()
        plain.close()


def test_a_kept_reply_unless_refused(redis_url: str, prefix: str) -> None:
    """KEEP_UNLESS: replies other than the tag reach on_reply at the barrier; the tag is a
    refusal that stops every record after it, raised as on_reply raises it."""
    ledger = _ledger(redis_url, prefix)
    key = f"{prefix}:{{r}}:list"
    plain = redis.Redis.from_url(redis_url)
    replies: list[Any] = []
    expect = KEEP_UNLESS + "NOBASE"

    def judge(reply: Any) -> None:
        if isinstance(reply, list) and reply[0] == b"NOBASE":
            raise LedgerError(f"not saved: base {reply[1]!r} is gone")
        replies.append(reply)

    try:
        session = ledger.open_run("r")
        session.send_script("test.append", [key], ["a"], judge, expect=expect)
        session.send_script("test.append", [key], ["b"], judge, expect=expect)
        session.barrier()
        assert replies == [1, 2]  # kept, and read at the barrier
        session.send_script("test.nobase", [key], ["base-1"], judge, expect=expect)
        session.send_script("test.append", [key], ["c"], judge, expect=expect)
        with pytest.raises(LedgerError, match="not saved: base b'base-1' is gone"):
            session.barrier()
        assert plain.lrange(key, 0, -1) == [b"a", b"b"]  # nothing after the refusal
        with pytest.raises(LedgerError, match="not saved"):  # believed recorded: stops
            session.finish(RunStatus.COMPLETED)
        run = ledger.get_run("r")
        assert run is not None and run.status == "running"
    finally:
        ledger.close()
        plain.close()


@pytest.mark.parametrize("level", ["sync", "async"])
def test_a_refusal_last_in_the_batch(redis_url: str, prefix: str, level: str) -> None:
    """At 'sync', where the sender reads its own record's barrier, a refusal with nothing sent
    after it leaves the session going (the checkpointer puts a checkpoint whose delta base is
    gone again, whole). At 'async' whoever reads the batch is not the sender, who went on as
    if it were recorded: the session stops, and the run is not marked ended."""
    ledger = _ledger(redis_url, prefix)
    key = f"{prefix}:{{r}}:list"
    plain = redis.Redis.from_url(redis_url)
    expect = KEEP_UNLESS + "NOBASE"

    def judge(reply: Any) -> None:
        if isinstance(reply, list) and reply[0] == b"NOBASE":
            raise LedgerError("not saved")

    try:
        session = ledger.open_run("r")
        session.use_durability(level)
        session.send_script("test.nobase", [key], ["base"], judge, expect=expect, defer=True)
        with pytest.raises(LedgerError, match="not saved"):
            session.barrier()
        if level == "sync":
            session.send_script("test.append", [key], ["whole"], judge, expect=expect,
                                defer=True)
            assert session.finish(RunStatus.COMPLETED)
            assert plain.lrange(key, 0, -1) == [b"whole"]
        else:
            with pytest.raises(LedgerError, match="not saved"):
                session.send_script("test.append", [key], ["whole"], judge, expect=expect)
            with pytest.raises(LedgerError, match="not saved"):
                session.finish(RunStatus.COMPLETED)
            run = ledger.get_run("r")
            assert run is not None and run.status == "running"
            assert plain.llen(key) == 0
    finally:
        ledger.close()
        plain.close()


def test_a_failed_write_stops_the_session(redis_url: str, prefix: str) -> None:
    """A write that fails (the connection broke under it) leaves the fate of what was sent
    before unknown, and the batch's count in Redis may include some of it: the session stops
    there, rather than send a next batch that Redis would skip against that count."""
    ledger = _ledger(redis_url, prefix)
    key = f"{prefix}:{{r}}:list"
    plain = redis.Redis.from_url(redis_url)
    try:
        session = ledger.open_run("r")
        for value in ("a", "b", "c"):
            session.send_script("test.append", [key], [value], lambda _r: None)
        # Its connection (named while records are unacknowledged) is cut by the server.
        cid = next(c["id"] for c in plain.client_list() if c["name"] == session._hot._name)
        plain.client_kill_filter(_id=cid)
        time.sleep(0.1)
        with pytest.raises(LedgerError):
            for i in range(100):  # the first writes may still reach the kernel's buffer
                session.send_script("test.append", [key], [f"x{i}"], lambda _r: None)
        with pytest.raises(LedgerError):  # sticky
            session.send_script("test.append", [key], ["after"], lambda _r: None)
        with pytest.raises(LedgerError):
            session.finish(RunStatus.COMPLETED)
        run = ledger.get_run("r")
        assert run is not None and run.status == "running"
    finally:
        ledger.close()
        plain.close()


# ---- the read made with the open ------------------------------------------------------------
READ = "return redis.call('LRANGE', KEYS[1], 0, -1)"


def test_a_read_made_in_the_opens_round_trip(redis_url: str, prefix: str,
                                             waits: Callable[[], int]) -> None:
    """``open_run(read=...)``: the adapter's first read goes with the lease, in one round trip;
    it serves that read once, and only while the session has sent nothing since."""
    from agentledger._session import NOT_READ

    ledger = _ledger(redis_url, prefix)
    ledger.register_scripts({"test.read": READ, "test.broken": "return redis.error_reply('x')"})
    key = f"{prefix}:{{r}}:list"
    plain = redis.Redis.from_url(redis_url)
    plain.rpush(key, "before")
    read = ("test.read", [key], [])
    plain.script_load(READ)  # a read whose script Redis does not know is made again later
    try:
        ledger.open_run("warm").finish(RunStatus.COMPLETED)  # the server checked once
        before = waits()
        session = ledger.open_run("r", read=read)
        assert waits() - before == 1
        assert session.prefetched("test.read", [key], ["other"]) is NOT_READ  # not this read
        session.finish(RunStatus.COMPLETED)

        session = ledger.open_run("r", read=read)
        assert session.prefetched(*read) == [b"before"]
        assert session.prefetched(*read) is NOT_READ  # once
        session.finish(RunStatus.COMPLETED)

        session = ledger.open_run("r", read=read)
        session.send_script("test.append", [key], ["mine"], lambda _r: None)
        assert session.prefetched(*read) is NOT_READ  # it sent something since: stale
        session.finish(RunStatus.COMPLETED)

        session = ledger.open_run("r", read=("test.broken", [key], []))  # opens all the same
        assert session.prefetched("test.broken", [key], []) is NOT_READ
        session.finish(RunStatus.COMPLETED)
    finally:
        ledger.close()
        plain.close()


def test_a_read_of_a_script_not_registered_is_refused_before_the_open(
        redis_url: str, prefix: str) -> None:
    ledger = _ledger(redis_url, prefix)
    try:
        with pytest.raises(ValueError, match=r"'test\.unknown' is registered"):
            ledger.open_run("r", read=("test.unknown", ["k"], []))
        with pytest.raises(ValueError, match=r"'test\.unknown' is registered"):
            asyncio.run(ledger.aopen_run("r", read=("test.unknown", ["k"], [])))
        assert ledger.get_run("r") is None  # no lease taken
    finally:
        ledger.close()


def test_a_read_made_in_the_opens_round_trip_from_asyncio(redis_url: str, prefix: str) -> None:
    ledger = _ledger(redis_url, prefix)
    ledger.register_scripts({"test.read": READ})
    key = f"{prefix}:{{r}}:list"
    plain = redis.Redis.from_url(redis_url)
    plain.rpush(key, "before")
    plain.script_load(READ)

    async def run() -> None:
        session = await ledger.aopen_run("r", read=("test.read", [key], []))
        assert session.prefetched("test.read", [key], []) == [b"before"]
        await session.afinish(RunStatus.COMPLETED)

    try:
        asyncio.run(run())
    finally:
        asyncio.run(ledger.aclose())
        ledger.close()
        plain.close()


def test_a_refusal_of_a_record_sent_without_waiting_stops_the_session_after_a_level_swap(
        redis_url: str, prefix: str) -> None:
    """A caller's own run at 'sync' joined by an adapter recording at 'async' (join/leave
    durability): what decides whether a refusal stops the session is how the refused record
    was sent (without waiting: its sender went on), not the level when the batch is read."""
    ledger = Ledger.from_url(redis_url, prefix=prefix)  # 'sync'
    ledger.register_scripts({"test.fail": FAIL})
    key = f"{prefix}:{{r}}:list"
    try:
        session = ledger.open_run("r")
        assert not session.pipelined
        before = session.join_durability("async")
        session.send_script("test.fail", [key], [], lambda _r: None, expect="OK")
        session.leave_durability(before)  # back at 'sync' before anything read it
        with pytest.raises(LedgerError, match="refused"):
            session.barrier()
        with pytest.raises(LedgerError, match="refused"):  # sticky
            session.finish(RunStatus.COMPLETED)
        run = ledger.get_run("r")
        assert run is not None and run.status == "running"
    finally:
        ledger.close()
