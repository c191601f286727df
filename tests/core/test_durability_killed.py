"""Durability "async": a process SIGKILLed right after sending loses nothing it handed to the
kernel (issue 12), over TCP and over a unix socket, sync and asyncio.

The child records N steps without waiting (no barrier, the bounds set above N) and SIGKILLs
itself as soon as the last send returns. Before its last steps it keeps Redis busy for a moment
(a script on another connection), so that those records are still unread in Redis's socket
when the process dies: with replies left unread, the close was a reset and Redis dropped them
(this test failed so before the replies were switched off). Its records go with Redis's replies off, so its socket
closes with a FIN and Redis applies all of it. The restart opens the run at once (the dead
owner's pid is on this host): it waits until Redis has freed the dead owner's connection, so
none of its records arrive after the takeover (they would be fenced out), finds all N steps
recorded and runs none of them again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import RedisServer, killed, run_child, tmpdir
from agentledger import FencedOutError, Ledger, RunStatus, StepCall

# 'rerun' tool steps, then LLM steps (a tool after an LLM answer waits for it to be acknowledged:
# docs/durability.md), so nothing is waited for: 4,850 records.
N = 2500
LLM_FROM = N - 150

CHILD = r"""
import asyncio, os, signal, sys, time
from agentledger import Ledger, StepCall

url, run_id, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ledger = Ledger(url=url, prefix="k", durability="async", max_unacked_records=10 * n,
                max_unacked_bytes=1 << 30)
BUSY = "local t = redis.call('TIME') local t0 = t[1] * 1000000 + t[2] " \
       "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - t0 > 300000 return 1"

def keep_redis_busy():
    # Its reply is never read: this process dies before it comes.
    conn = ledger.redis.connection_pool.make_connection()
    conn.send_command("EVAL", BUSY, 0)
    time.sleep(0.05)  # let Redis start it: the records sent next wait unread behind it

def call(i):
    kind = "llm" if i >= n - 150 else "tool"
    return StepCall(kind=kind, name=f"s{i}", inputs=i, intent=kind == "tool")

if mode == "sync":
    session = ledger.open_run(run_id)
    session.activate()
    for i in range(n):
        if i == n - 300:
            keep_redis_busy()
        session.call(call(i), lambda i=i: f"value {i} " * 20)
    assert session._hot.unacknowledged > n  # nothing was waited for
    os.kill(os.getpid(), signal.SIGKILL)
else:
    async def main():
        session = await ledger.aopen_run(run_id)
        session.activate()
        for i in range(n):
            if i == n - 300:
                keep_redis_busy()
            async def body(i=i):
                return f"value {i} " * 20
            await session.acall(call(i), body)
        assert session._hot.unacknowledged > n
        os.kill(os.getpid(), signal.SIGKILL)
    asyncio.run(main())
"""


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    d = tmpdir()
    srv = RedisServer(d, appendonly=False, extra=["--unixsocket", str(d / "redis.sock"),
                                                  "--unixsocketperm", "700"]).start()
    try:
        yield srv
    finally:
        srv.kill()
        shutil.rmtree(d, ignore_errors=True)


def _url(server: RedisServer, transport: str) -> str:
    return server.url if transport == "tcp" else f"unix://{Path(server.dir) / 'redis.sock'}"


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_process_killed_after_sending_loses_nothing(server: RedisServer, transport: str,
                                                      mode: str) -> None:
    url = _url(server, transport)
    run_id = f"{transport}-{mode}"
    child = run_child(CHILD, url, run_id, str(N), mode)
    assert killed(child), child.stderr[-2000:]
    ledger = Ledger(url=url, prefix="k", durability="async", lease_ms=5000)
    try:
        session = ledger.open_run(run_id)  # at once: the owner's pid is gone
        token = session.activate()
        ran: list[int] = []
        for i in range(N):
            kind = "llm" if i >= LLM_FROM else "tool"
            call = StepCall(kind=kind, name=f"s{i}", inputs=i, intent=kind == "tool")
            value = session.call(call, lambda i=i: ran.append(i) or f"value {i} " * 20)
            assert value == f"value {i} " * 20
        session.deactivate(token)
        assert session.finish(RunStatus.COMPLETED)
        assert ran == []  # every step the killed process sent was applied: none runs again
        assert session.replayed == N
        steps = ledger.steps(run_id)
        assert len(steps) == N and all(s.status == "completed" and s.attempts == 1
                                       for s in steps)
    finally:
        ledger.delete_run(run_id, force=True)
        ledger.close()


def test_a_lapsed_owner_with_records_unacknowledged_is_waited_for(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """A run whose lease lapsed while its owner's connection still holds unacknowledged records
    (a hung process, a half-open connection): the takeover waits for that connection (named
    after the owner) at most a lease, then warns and goes on; the old owner is fenced out."""
    import redis as redis_py

    url = _url(server, "tcp")
    old = Ledger(url=url, prefix="lapsed", durability="async", lease_ms=300)
    new = Ledger(url=url, prefix="lapsed", durability="async", lease_ms=300)
    admin = redis_py.Redis.from_url(url)
    try:
        session = old.open_run("r")
        session.stop_renewing()  # hung: its lease lapses, its connection stays
        for i in range(3):
            session.call(StepCall(kind="llm", name="chat", inputs=i, intent=False), lambda i=i: i)
        names = [c["name"] for c in admin.client_list()]
        assert f"agentledger:{session.owner}" in names  # named while records are unacknowledged
        while not old.is_stalled(old.get_run("r")):  # type: ignore[arg-type]
            time.sleep(0.01)
        taker = new.open_run("r")
        assert "still holds a connection of its previous owner" in caplog.text
        assert taker.fence > session.fence and taker.replayed == 0
        assert len(new.steps("r")) == 3  # the three were applied before the takeover
        with pytest.raises(FencedOutError):
            session.call(StepCall(kind="llm", name="chat", inputs=9, intent=False), lambda: 9)
            session.barrier()
        taker.finish(RunStatus.COMPLETED)
    finally:
        new.delete_run("r", force=True)
        old.close()
        new.close()
        admin.close()
