"""Records held in the process (``send_script(hold=True)``, and ``defer`` at 'sync') go in the
same write as the next record or barrier, in order; their count and bytes are bounded with the
unacknowledged records; a flushed script cache does not lose them; a session that ends without
sending them loses them (as a killed process would)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from _support import RedisServer
from agentledger import Ledger, LedgerError, LedgerUnavailableError, RunStatus, StepCall

APPEND = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"


def _ledger(redis_url: str, prefix: str, **options: Any) -> Ledger:
    ledger = Ledger.from_url(redis_url, prefix=prefix, **options)
    ledger.register_scripts({"test.append": APPEND})
    return ledger


def _llm(session: Any, i: int) -> str:
    return str(session.call(StepCall(kind="llm", name="chat", inputs=i, intent=False),
                            lambda: f"answer {i}"))


@pytest.mark.parametrize("level", ["sync", "async"])
def test_held_records_go_with_the_next_record_in_order(redis_url: str, prefix: str,
                                                       level: str) -> None:
    ledger = _ledger(redis_url, prefix)
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    replies: list[Any] = []
    try:
        session = ledger.open_run("r")
        session.use_durability(level)
        session.send_script("test.append", [key], ["a"], replies.append, hold=True)
        session.send_script("test.append", [key], ["b"], replies.append, hold=True)
        assert session._hot.unacknowledged == 2
        assert plain.lrange(key, 0, -1) == []  # still in this process
        _llm(session, 1)  # the next record takes them along, before itself
        if level == "async":  # written with it, not waited for: read at the barrier
            assert not session._hot._held and session._hot.unacknowledged == 3
            session.barrier()
        assert plain.lrange(key, 0, -1) == [b"a", b"b"]
        assert len(ledger.steps("r")) == 1
        session.send_script("test.append", [key], ["c"], replies.append, hold=True)
        session.barrier()
        assert plain.lrange(key, 0, -1) == [b"a", b"b", b"c"]
        assert replies == [1, 2, 3]  # every reply reached its callback
        assert session.finish(RunStatus.COMPLETED)
    finally:
        ledger.close()
        plain.close()


def test_held_records_are_bounded_by_count_and_bytes(redis_url: str, prefix: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    for options, value, most in (({"max_unacked_records": 4}, "x", 3),
                                 ({"max_unacked_bytes": 10_000}, "y" * 3000, 3)):
        ledger = _ledger(redis_url, prefix, **options)
        plain.delete(key)
        try:
            session = ledger.open_run("r")
            seen = []
            for _ in range(13):
                session.send_script("test.append", [key], [value], lambda _r: None, hold=True)
                seen.append(session._hot.unacknowledged)
            assert max(seen) <= most and seen.count(0) >= 3, seen
            assert plain.llen(key) == 13 - seen[-1]  # what left the process is in Redis
            session.barrier()
            assert plain.llen(key) == 13
            session.finish(RunStatus.COMPLETED)
        finally:
            ledger.close()
    plain.close()


def test_a_session_closed_with_held_records_loses_them(redis_url: str, prefix: str) -> None:
    ledger = _ledger(redis_url, prefix)
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    try:
        session = ledger.open_run("r")
        session.send_script("test.append", [key], ["a"], lambda _r: None, hold=True)
        session._hot.close()  # as a process that stops here: never sent
        assert plain.llen(key) == 0 and session._hot.unacknowledged == 0
    finally:
        ledger.close()
        plain.close()


def test_held_records_survive_a_script_flush(tmp_path: Path, prefix: str) -> None:
    """EVALSHA of a held record finds no script (flushed): loaded again and sent again, from
    the first one not run, in order. (A server of its own: SCRIPT FLUSH is server-wide.)"""
    server = RedisServer(tmp_path, appendonly=False).start()
    try:
        ledger = _ledger(server.url, prefix)
        plain = redis.Redis.from_url(server.url)
        key = f"{prefix}:{{r}}:held"
        try:
            session = ledger.open_run("r")
            session.send_script("test.append", [key], ["a"], lambda _r: None, hold=True)
            session.barrier()
            plain.script_flush()
            replies: list[Any] = []
            session.send_script("test.append", [key], ["b"], replies.append, hold=True)
            session.send_script("test.append", [key], ["c"], replies.append, hold=True)
            _llm(session, 1)
            assert plain.lrange(key, 0, -1) == [b"a", b"b", b"c"]
            assert replies == [2, 3]
            assert session.finish(RunStatus.COMPLETED)
        finally:
            ledger.close()
            plain.close()
    finally:
        server.stop()


def test_held_records_from_asyncio(redis_url: str, prefix: str) -> None:
    async def main() -> None:
        ledger = _ledger(redis_url, prefix)
        plain = redis.Redis.from_url(redis_url)
        key = f"{prefix}:{{r}}:held"
        replies: list[Any] = []
        try:
            session = await ledger.aopen_run("r")
            await session.asend_script("test.append", [key], ["a"], replies.append, hold=True)
            assert plain.llen(key) == 0
            await session.acall(StepCall(kind="llm", name="chat", inputs=1, intent=False),
                                _answer)
            assert plain.lrange(key, 0, -1) == [b"a"]
            await session.asend_script("test.append", [key], ["b"], replies.append, hold=True)
            assert await session.afinish(RunStatus.COMPLETED)  # the end sends them first
            assert plain.lrange(key, 0, -1) == [b"a", b"b"] and replies == [1, 2]
        finally:
            await ledger.aclose()
            plain.close()

    asyncio.run(main())


async def _answer() -> str:
    return "answer"


FAIL = "return redis.error_reply('refused')"


def test_a_refused_held_record_stops_those_after_it_and_the_session(redis_url: str,
                                                                     prefix: str) -> None:
    """Held records go wrapped like any record sent with replies off: one that Redis refuses
    stops every record after it (what Redis holds stays a prefix), and the session stops."""
    ledger = _ledger(redis_url, prefix)
    ledger.register_scripts({"test.fail": FAIL})
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    try:
        session = ledger.open_run("r")  # 'sync'
        session.send_script("test.append", [key], ["a"], lambda _r: None, defer=True)
        session.send_script("test.fail", [key], [], lambda _r: None, hold=True)
        session.send_script("test.append", [key], ["c"], lambda _r: None, hold=True)
        with pytest.raises(LedgerError, match="refused"):
            session.barrier()
        assert plain.lrange(key, 0, -1) == [b"a"]
        with pytest.raises(LedgerError, match="refused"):  # sticky: nothing more is recorded
            _llm(session, 1)
        with pytest.raises(LedgerError, match="refused"):
            session.finish(RunStatus.COMPLETED)
        assert ledger.get_run("r").status == "running"  # never marked ended: it resumes
    finally:
        ledger.close()
        plain.close()


def test_held_records_keep_their_order_when_only_some_scripts_are_cached(
        redis_url: str, prefix: str) -> None:
    """The first held record's script is new to Redis, the second's is cached: the second
    must not run before the first (nor twice)."""
    fresh = APPEND + " -- " + prefix  # a script this Redis has never seen
    ledger = _ledger(redis_url, prefix)
    ledger.register_scripts({"test.fresh": fresh})
    plain = redis.Redis.from_url(redis_url)
    plain.script_load(APPEND)
    key = f"{prefix}:{{r}}:held"
    replies: list[Any] = []
    try:
        session = ledger.open_run("r")
        session.send_script("test.fresh", [key], ["first"], replies.append, hold=True)
        session.send_script("test.append", [key], ["second"], replies.append, hold=True)
        session.barrier()
        assert plain.lrange(key, 0, -1) == [b"first", b"second"]
        assert replies == [1, 2]
        assert session.finish(RunStatus.COMPLETED)
    finally:
        ledger.close()
        plain.close()


@pytest.mark.parametrize("refused", [False, True])
def test_afinish_reads_what_a_thread_held_or_sent(redis_url: str, prefix: str,
                                                  refused: bool) -> None:
    """A run opened from asyncio whose records also came from a thread (a sync node, a tool
    in ``to_thread``): its end reads them first; a refused one leaves the run open."""
    ledger = _ledger(redis_url, prefix, durability="async")
    ledger.register_scripts({"test.fail": FAIL})
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    replies: list[Any] = []

    async def run() -> None:
        session = await ledger.aopen_run("r")

        def in_thread() -> None:
            if refused:
                session.send_script("test.fail", [key], [], replies.append)
            else:
                session.send_script("test.append", [key], ["held"], replies.append, hold=True)

        await asyncio.to_thread(in_thread)
        if refused:
            with pytest.raises(LedgerError, match="refused"):
                await session.afinish(RunStatus.COMPLETED)
        else:
            assert await session.afinish(RunStatus.COMPLETED)

    try:
        asyncio.run(run())
        if refused:
            assert ledger.get_run("r").status == "running"
        else:
            assert plain.lrange(key, 0, -1) == [b"held"]
            assert replies == [1]
            assert ledger.get_run("r").status == "completed"
    finally:
        asyncio.run(ledger.aclose())
        ledger.close()
        plain.close()


def test_a_kept_reply_rejected_at_the_end_leaves_the_run_open(redis_url: str,
                                                               prefix: str) -> None:
    """A record whose reply its caller judges (the checkpointer's NOBASE) is rejected at the
    run's end: the run is not marked ended."""
    ledger = _ledger(redis_url, prefix, durability="async")
    ledger.register_scripts({"test.nobase": "return {'NOBASE', 'gone'}"})

    def reject(reply: Any) -> None:
        raise LedgerError(f"not saved: {reply!r}")

    try:
        session = ledger.open_run("r")
        session.send_script("test.nobase", [f"{prefix}:{{r}}:x"], [], reject)
        with pytest.raises(LedgerError, match="not saved"):
            session.finish(RunStatus.COMPLETED)
        assert ledger.get_run("r").status == "running"
    finally:
        ledger.close()


def test_losing_held_records_stops_the_session(redis_url: str, prefix: str) -> None:
    """The step connection dies with a record held: the barrier that would have written it
    fails, and so does everything after it (never a run marked ended without it)."""
    ledger = _ledger(redis_url, prefix, durability="async")
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    try:
        session = ledger.open_run("r")
        session.send_script("test.append", [key], ["warm"], lambda _r: None)
        session.barrier()
        port = session._hot._conn._sock.getsockname()[1]
        [mine] = [c for c in plain.client_list() if c["addr"].endswith(f":{port}")]
        plain.client_kill_filter(_id=mine["id"])
        time.sleep(0.2)  # the reset is back: the held record's write itself fails
        session.send_script("test.append", [key], ["held"], lambda _r: None, hold=True)
        with pytest.raises(LedgerUnavailableError):
            session.barrier()
        with pytest.raises(LedgerUnavailableError):  # sticky
            session.barrier()
        with pytest.raises(LedgerUnavailableError):
            session.finish(RunStatus.COMPLETED)
        assert ledger.get_run("r").status == "running"
        assert plain.lrange(key, 0, -1) == [b"warm"]
    finally:
        ledger.close()
        plain.close()


def test_afinish_on_another_event_loop_refuses_to_end_the_run(redis_url: str,
                                                              prefix: str) -> None:
    ledger = _ledger(redis_url, prefix, durability="async")
    key = f"{prefix}:{{r}}:held"

    async def record() -> Any:
        session = await ledger.aopen_run("r")
        await session.asend_script("test.append", [key], ["held"], lambda _r: None, hold=True)
        return session

    async def end(session: Any) -> None:
        with pytest.raises(LedgerError, match="another event loop"):
            await session.afinish(RunStatus.COMPLETED)

    try:
        session = asyncio.run(record())
        asyncio.run(end(session))
        assert ledger.get_run("r").status == "running"
    finally:
        ledger.close()


@pytest.mark.parametrize("hold", [True, False])
def test_a_record_with_a_non_text_argument_is_refused_before_it_is_queued(
        redis_url: str, prefix: str, hold: bool) -> None:
    ledger = _ledger(redis_url, prefix, durability="async")
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    try:
        session = ledger.open_run("r")
        with pytest.raises(TypeError, match="str or bytes, not int"):
            session.send_script("test.append", [key], [5], lambda _r: None, hold=hold)
        assert session._hot.unacknowledged == 0  # nothing queued, nothing written
        session.send_script("test.append", [key], ["next"], lambda _r: None, hold=hold)
        session.barrier()
        assert plain.lrange(key, 0, -1) == [b"next"]
        assert session.finish(RunStatus.COMPLETED)
    finally:
        ledger.close()
        plain.close()


@pytest.mark.parametrize("held", [False, True])
def test_a_barrier_cancelled_before_its_replies_stops_the_session(tmp_path: Path, prefix: str,
                                                                  held: bool) -> None:
    """A barrier's round trip cancelled (a task timeout) before its replies were read: the
    records it acknowledged, and any held ones it carried, are of unknown fate, so the session
    stops; the run is left to a restart, which finds what Redis applied."""
    server = RedisServer(tmp_path, appendonly=False).start()
    assert server.proc is not None

    async def main() -> None:
        ledger = _ledger(server.url, prefix, durability="async")
        key = f"{prefix}:{{r}}:held"
        try:
            session = await ledger.aopen_run("r")
            await session.acall(StepCall(kind="llm", name="chat", inputs=1, intent=False),
                                _answer)
            if held:
                await session.asend_script("test.append", [key], ["a"], lambda _r: None,
                                           hold=True)
            server.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                barrier = asyncio.ensure_future(session.abarrier())
                await asyncio.sleep(0.3)
                assert not barrier.done()
                barrier.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await barrier
            finally:
                server.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            with pytest.raises(LedgerError, match="cancelled"):
                await session.acall(StepCall(kind="llm", name="chat", inputs=2, intent=False),
                                    _answer)
            with pytest.raises(LedgerError, match="cancelled"):
                await session.afinish(RunStatus.COMPLETED)
            run = ledger.get_run("r")
            assert run is not None and run.status == RunStatus.RUNNING  # left to a restart
        finally:
            await ledger.aclose()
            ledger.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_held_records_go_in_the_write_of_the_round_trip_that_closes_their_batch(
        redis_url: str, prefix: str, durability: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held records are not written on their own before a barrier, a call or the run's end:
    they go in that round trip's one write (one socket write per superstep for the LangGraph
    checkpointer at 'sync', not two)."""
    writes = [0]
    send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(self: Any, *a: Any, **k: Any) -> Any:
        writes[0] += 1
        return send(self, *a, **k)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                        counting_send)
    # A long lease: the renewer (a third of it) never writes during the test.
    ledger = _ledger(redis_url, prefix, durability=durability, lease_ms=600_000)
    plain = redis.Redis.from_url(redis_url)
    key = f"{prefix}:{{r}}:held"
    replies: list[Any] = []
    try:
        session = ledger.open_run("r")
        for closing in ("barrier", "call", "finish"):
            session.send_script("test.append", [key], [closing], replies.append, hold=True)
            before = writes[0]
            if closing == "barrier":
                session.barrier()
            elif closing == "call":
                session.call(StepCall(kind="llm", name="chat", inputs=1, intent=False),
                             lambda: "answer")
            else:
                assert session.finish(RunStatus.COMPLETED)
            # One write carries the held record and what closes its batch (at 'async' the call
            # is not waited for: its record goes with the held one, read at the end). The
            # finish is written after that: the held record's reply is judged here, so it
            # cannot go in the same round trip (test_last_record.py).
            assert writes[0] - before == (2 if closing == "finish" else 1), closing
        assert plain.lrange(key, 0, -1) == [b"barrier", b"call", b"finish"]
        assert replies == [1, 2, 3]
        run = ledger.get_run("r")
        assert run is not None and run.status == RunStatus.COMPLETED
    finally:
        ledger.close()
        plain.close()


@pytest.mark.parametrize("closing", ["barrier", "call"])
def test_a_kept_reply_before_a_record_redis_did_not_run_is_still_handed_over(
        tmp_path: Path, prefix: str, closing: str) -> None:
    """Scripts flushed between two batches: the next batch's first record (a script new to
    the socket, loaded and run) keeps its reply; the next one finds no script (NOSCRIPT) and is
    sent again. The first record's reply still reaches its sender at the barrier."""
    server = RedisServer(tmp_path, appendonly=False).start()
    ledger = _ledger(server.url, prefix, durability="async")
    admin = redis.Redis.from_url(server.url)
    key = f"{prefix}:{{r}}:kept"
    replies: list[Any] = []
    try:
        session = ledger.open_run("r")
        _llm(session, 1)
        session.barrier()  # 'complete' is loaded on this socket now
        admin.script_flush()
        session.send_script("test.append", [key], ["a"], replies.append)  # loaded, run
        _llm(session, 2)  # EVALSHA of 'complete': NOSCRIPT, the batch stops here
        if closing == "barrier":
            session.barrier()
        else:
            assert session.call_script("test.append", [key], ["b"]) == 2
        assert replies == [1]
        assert admin.lrange(key, 0, -1) == ([b"a"] if closing == "barrier" else [b"a", b"b"])
        assert session.finish(RunStatus.COMPLETED)
        assert [s.key for s in ledger.steps("r")] == ["llm:chat#1", "llm:chat#2"]
    finally:
        admin.close()
        ledger.close()
        server.stop()


def test_a_held_record_that_cannot_be_written_stops_the_session(redis_url: str,
                                                                prefix: str) -> None:
    """A held record whose text does not encode fails the barrier's round trip after the batch
    was taken off the session: the session stops (its records' fate is unknown), and no later
    record is counted as saved."""
    ledger = _ledger(redis_url, prefix, durability="async")
    key = f"{prefix}:{{r}}:held"
    try:
        session = ledger.open_run("r")
        _llm(session, 1)
        session.send_script("test.append", [key], ["\ud800"], lambda _r: None, hold=True)
        with pytest.raises(LedgerError, match="UnicodeEncodeError"):
            session.barrier()
        with pytest.raises(LedgerError, match="UnicodeEncodeError"):
            _llm(session, 2)
        with pytest.raises(LedgerError, match="UnicodeEncodeError"):
            session.finish(RunStatus.COMPLETED)
        run = ledger.get_run("r")
        assert run is not None and run.status == RunStatus.RUNNING  # left to a restart
    finally:
        ledger.close()
