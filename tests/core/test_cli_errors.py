"""What a user can get wrong, through the real ``agentledger`` command: one line on stderr,
``agentledger: ...``, a non-zero status, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import agentledger
from _support import REPO, RedisServer, free_cluster_port, tmpdir
from agentledger import Ledger


def agentledger_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                    timeout: float = 90) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AGENTLEDGER_URL": "", "AGENTLEDGER_HOME": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "agentledger._cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd or REPO))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode not in (0, None), (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("agentledger: "), lines[0]
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def secured_redis() -> Iterator[RedisServer]:
    d = tmpdir()
    server = RedisServer(d, appendonly=False).start()
    redis.Redis.from_url(server.url).config_set("requirepass", "right-secret")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_wrong_password_says_authentication_failed(secured_redis: RedisServer) -> None:
    url = f"redis://:wrong-secret@127.0.0.1:{secured_redis.port}/0"
    line = assert_one_line_error(agentledger_cli("runs", "--url", url), "authentication failed")
    assert "wrong-secret" not in line


def test_tls_url_to_a_plain_port_fails_fast(redis_url: str) -> None:
    port = redis_url.split(":")[2].split("/")[0]
    assert_one_line_error(agentledger_cli("runs", "--url", f"rediss://127.0.0.1:{port}/0",
                                          timeout=60))


@pytest.mark.parametrize("why", ["not a cluster", "nothing listens"])
def test_cluster_url_to_a_non_cluster_or_dead_node(redis_url: str, why: str) -> None:
    port = redis_url.split(":")[2].split("/")[0] if why == "not a cluster" else str(free_cluster_port())
    assert_one_line_error(agentledger_cli("runs", "--url", f"redis+cluster://127.0.0.1:{port}"))


def test_db_index_out_of_range(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    assert_one_line_error(agentledger_cli("runs", "--url", f"{base}/9999"), "DB index")


def test_serve_on_a_port_in_use(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(agentledger_cli("serve", "--url", redis_url, "--port", str(port)),
                              f"127.0.0.1:{port}", "in use")


def test_server_start_without_a_binary(tmp_path: Path) -> None:
    missing = agentledger_cli("server", "start", "--home", str(tmp_path / "h"),
                              env={"AGENTLEDGER_REDIS_SERVER": str(tmp_path / "no-such-redis")})
    assert_one_line_error(missing, "AGENTLEDGER_REDIS_SERVER", "not an executable")
    broken = tmp_path / "broken-redis-server"
    broken.write_text("#!/bin/sh\necho 'not redis' >&2\nexit 3\n")
    broken.chmod(0o755)
    assert_one_line_error(agentledger_cli("server", "start", "--home", str(tmp_path / "h"),
                                          env={"AGENTLEDGER_REDIS_SERVER": str(broken)}),
                          "not a working redis-server")


def test_unknown_run_is_one_line(redis_url: str, prefix: str) -> None:
    assert_one_line_error(agentledger_cli("show", "no-such-run", "--url", redis_url,
                                          "--prefix", prefix), "no run 'no-such-run'")


def test_a_closed_pipe_ends_quietly(ledger: Ledger, redis_url: str, prefix: str) -> None:
    @agentledger.step
    def big(n: int) -> list[str]:
        return [f"line {i} " + "x" * 60 for i in range(n)]

    with ledger.run("big-run"):
        big(5000)  # a few hundred KB of JSON: more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "agentledger._cli", "show", "big-run",
                             "--json", "--url", redis_url, "--prefix", prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(REPO))
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == "{"  # what `| head -1` reads, then it goes away
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) != 0
    assert err == "", err  # no traceback, no "Exception ignored" at exit


def test_global_options_after_the_command(ledger: Ledger, redis_url: str, prefix: str) -> None:
    with ledger.run("order-9"):
        pass
    runs = agentledger_cli("runs", "--json", "--url", redis_url, "--prefix", prefix)
    assert runs.returncode == 0, runs.stderr
    assert [r["run_id"] for r in json.loads(runs.stdout)] == ["order-9"]
    approvals = agentledger_cli("approvals", "--json", "--url", redis_url, "--prefix", prefix)
    assert approvals.returncode == 0 and json.loads(approvals.stdout) == []
    # Before the command still works, and an option before it is not reset by the command.
    before = agentledger_cli("--url", redis_url, "--prefix", prefix, "--json", "show", "order-9")
    assert json.loads(before.stdout)["run"]["run_id"] == "order-9"
    mixed = agentledger_cli("--url", redis_url, "show", "order-9", "--prefix", prefix, "--json")
    assert json.loads(mixed.stdout)["run"]["run_id"] == "order-9"
