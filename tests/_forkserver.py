"""A fork server for crash children: a process that imports a framework once, then forks one
fresh child process per request.

Starting Python and importing the OpenAI Agents SDK takes seconds, and a crash matrix starts
hundreds of children. Each child is still a real process of its own: it runs the child script
as ``__main__`` with its own arguments, environment and output files, may die by SIGKILL at
a crash point, and the next attempt is a new child. The server only imports modules (it runs
nothing of them); a child re-reads ``AGENTLEDGER_CRASH_AT`` from its own environment.

Two servers with different hash seeds take turns, so that a restarted child never iterates
sets and dicts of strings in the order the crashed one did, as with a fresh interpreter.

    servers = ForkServers(["agents", "agentledger"], paths=[CHILDREN])   # in a fixture
    proc = servers.run(CHILD, "seq", run_id, env={...})   # a subprocess.CompletedProcess
    servers.close()
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

_TESTS = Path(__file__).resolve().parent


class ForkServer:
    """One server process; ``run`` forks a child of it and waits for the child's end."""

    def __init__(self, preload: Sequence[str], *, hash_seed: int,
                 paths: Sequence[Path] = ()) -> None:
        from _support import OFFLINE_ENV, REPO

        self._work = Path(tempfile.mkdtemp(prefix="al-forkserver-"))
        self._stderr = (self._work / "server.err").open("w")
        python_path = os.pathsep.join([str(REPO / "tests"), *map(str, paths)])
        full_env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": python_path,
                    "PYTHONHASHSEED": str(hash_seed)}
        full_env.pop("AGENTLEDGER_CRASH_AT", None)
        self._proc = subprocess.Popen(
            [sys.executable, __file__, *preload], env=full_env, cwd=str(REPO), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._count = 0
        self._ready = False

    def wait_ready(self) -> None:
        """Wait for the preloading to end (servers started together import in parallel)."""
        if not self._ready:
            answer = self._read()
            if answer.get("ready") is not True:
                raise RuntimeError(f"fork server did not start: {answer}")
            self._ready = True

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(10)
            err = (self._work / "server.err").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fork server died (status {self._proc.returncode}):\n{err}")
        return dict(json.loads(line))

    def run(self, script: str | Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``args`` in a forked child, to its end or death."""
        self.wait_ready()
        self._count += 1
        out = self._work / f"{self._count}.out"
        err = self._work / f"{self._count}.err"
        request = {"script": str(script), "args": list(args), "env": env or {},
                   "out": str(out), "err": str(err), "timeout": timeout}
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        answer = self._read()
        stdout = out.read_text(errors="replace")
        stderr = err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        cmd = [str(script), *args]
        if answer.get("timed_out"):
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, int(answer["returncode"]), stdout, stderr)

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()
        for f in self._work.iterdir():
            f.unlink()
        self._work.rmdir()


class ForkServers:
    """Two fork servers with different hash seeds, used in turn."""

    def __init__(self, preload: Sequence[str], paths: Sequence[Path] = ()) -> None:
        self._servers = [ForkServer(preload, hash_seed=seed, paths=paths) for seed in (1, 2)]
        self._turn = 0
        for server in self._servers:
            server.wait_ready()

    def run(self, script: str | Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        server = self._servers[self._turn]
        self._turn = (self._turn + 1) % len(self._servers)
        return server.run(script, *args, env=env, timeout=timeout)

    def close(self) -> None:
        for server in self._servers:
            server.close()


# ---- the server process ------------------------------------------------------------------
def _child(request: dict[str, Any]) -> int:
    """In the forked child: become ``python script args...`` and return its exit status."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["out"]), (2, request["err"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.environ.update(request["env"])
    faults = sys.modules.get("agentledger._faults")
    if faults is not None:  # preloaded: arm this child's own crash point, as its import would
        faults._target = faults._parse(os.environ.get("AGENTLEDGER_CRASH_AT"))
        faults._counts.clear()
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """The child's exit code (negative: the signal that killed it), and whether it timed out."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        timed_out = not ready
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    return os.waitstatus_to_exitcode(status), timed_out


def _answer(stream: IO[str], answer: dict[str, Any]) -> None:
    stream.write(json.dumps(answer) + "\n")
    stream.flush()


def serve(preload: Sequence[str]) -> int:
    """Import ``preload``, then fork a child per request line on stdin until stdin closes."""
    for name in preload:
        importlib.import_module(name)
    if threading.active_count() > 1:
        # Threads do not survive a fork: a child would wait for them forever.
        raise RuntimeError(f"preloading started threads: {threading.enumerate()}")
    gc.freeze()  # children's collections then leave the shared, preloaded objects alone
    protocol = sys.stdout
    _answer(protocol, {"ready": True})
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = _child(request)
            # End as the interpreter would (exit handlers, flushed output) but skip tearing
            # down the framework's modules one by one, which takes about a second.
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        code, timed_out = _wait(pid, float(request["timeout"]))
        _answer(protocol, {"returncode": code, "timed_out": timed_out})


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
