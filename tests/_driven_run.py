"""A run session in a child process of its own, driven step by step over a pipe, so that a test
can SIGKILL the process between any two of its records (tests/core/test_durability_stateful.py).

``Spawner`` starts this file as a process that imports agentledger once, then forks one
client per request (a new process per restart costs milliseconds); the client connects back to
the test over a unix socket. Requests and answers are tuples:

    ("step", op, name, size, kill_in_body)  ->  ("ok", addr)   op: llm | rerun | fail | ask
    ("barrier",)                      ->  ("ok", addr)
    ("finish",)                       ->  ("ok", addr)
    any request that raises           ->  ("error", "<type>: <message>", addr)

``addr`` is the local address of the session's step connection ("host:port", as Redis's
CLIENT LIST shows it), or None before it connected. A step's body appends "<name> <idempotency
key>" to the effects file and returns a text of ``size`` characters (a big outcome keeps Redis
busy for a while after it was sent); with ``kill_in_body`` the process SIGKILLs itself right
after the effect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import agentledger
from agentledger import Ledger, RunSession, RunStatus, StepCall

__all__ = ["Spawner", "serve"]


class Spawner:
    """The test's side: start the spawning process; ``spawn`` returns a new client's pid and
    the connection to it; ``kill`` SIGKILLs it and returns once its sockets are closed."""

    def __init__(self, work: Path) -> None:
        from _support import OFFLINE_ENV, REPO

        self._listener = Listener(str(work / "driven.sock"), family="AF_UNIX")
        env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO / "tests")}
        env.pop("AGENTLEDGER_CRASH_AT", None)
        self._proc = subprocess.Popen([sys.executable, __file__, str(work / "driven.sock")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=env, cwd=str(REPO))
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the spawning process did not start")

    def spawn(self, *args: Any) -> tuple[int, Connection]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(args) + "\n")
        self._proc.stdin.flush()
        pid = int(self._proc.stdout.readline())
        return pid, self._listener.accept()

    @staticmethod
    def kill(pid: int, conn: Connection) -> None:
        os.kill(pid, signal.SIGKILL)
        try:
            while True:
                conn.recv()  # an answer it sent before dying, then EOF: its sockets are closed
        except (EOFError, OSError):
            pass
        conn.close()

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(30)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._listener.close()


def _addr(session: RunSession) -> str | None:
    sock = getattr(session._hot._conn, "_sock", None)
    if sock is None or sock.family != socket.AF_INET:
        return None
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _value(name: str, size: int) -> str:
    return (name * (size // len(name) + 1))[:size]


def _step(session: RunSession, effects: str, op: str, name: str, size: int,
          kill_in_body: bool) -> None:
    call = StepCall(kind="llm" if op == "llm" else "tool", name=name, inputs=name,
                    intent=op != "llm", policy=None if op in ("llm", "rerun") else op)

    def body() -> str:
        fd = os.open(effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:  # one write(2) in O_APPEND: the line is in the file before any kill
            os.write(fd, f"{name} {agentledger.current_idempotency_key()}\n".encode())
        finally:
            os.close(fd)
        if kill_in_body:
            os.kill(os.getpid(), signal.SIGKILL)
        return _value(name, size)

    if session.call(call, body) != _value(name, size):
        raise AssertionError(f"{name}: wrong value")


def serve(conn: Connection, url: str, prefix: str, run_id: str, durability: str, effects: str,
          max_unacked_records: int) -> None:
    """The child's main: open (or take over) the run, then answer requests until killed."""
    ledger = Ledger.from_url(url, prefix=prefix, durability=durability, lease_ms=60_000,
                             max_unacked_records=max_unacked_records)
    session = ledger.open_run(run_id, on_busy="takeover")
    session.activate()
    while True:
        request: tuple[Any, ...] = conn.recv()
        try:
            if request[0] == "step":
                _step(session, effects, *request[1:])
            elif request[0] == "barrier":
                session.barrier()
            elif request[0] == "finish":
                if not session.finish(RunStatus.COMPLETED):
                    raise RuntimeError("the run was not marked ended")
            else:
                raise ValueError(f"unknown request {request!r}")
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}", _addr(session)))
            continue
        conn.send(("ok", _addr(session)))


def _spawn_loop(address: str) -> None:
    """The spawning process: one forked client per request line, until stdin closes."""
    print("ready", flush=True)
    for line in sys.stdin:
        while True:  # reap the clients that died since
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        args = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sys.stdin.close()
                serve(Client(address, family="AF_UNIX"), *args)
                code = 0
            finally:
                os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    _spawn_loop(sys.argv[1])
