"""The embedded ledger found like ``.git``, private to its user, and its server status."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from _support import REPO, redis_server_binary, run_child
from agentledger import EmbeddedRedisError
from agentledger._embedded import _socket_path, embedded_url, server_status, stop_embedded

RECORD = """
import agentledger
from agentledger import Ledger

@agentledger.step
def lookup(order):
    return {"order": order, "paid": True}

with Ledger.from_url().run("order-1"):
    lookup("1")
"""

NOBODY = 65534


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AGENTLEDGER_URL": "", "AGENTLEDGER_HOME": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "agentledger._cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=90, cwd=str(cwd))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "project"
    root.mkdir()
    yield root
    pid_file = root / ".agentledger" / "redis.pid"
    if pid_file.exists() and pid_alive(int(pid_file.read_text())):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_read_only_commands_start_nothing_where_there_is_no_ledger(project: Path) -> None:
    for args in (["runs"], ["show", "order-1"], ["server", "status"], ["serve"]):
        proc = cli(*args, cwd=project)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("agentledger: ")
        assert "no embedded ledger found" in proc.stderr and str(project) in proc.stderr
        assert not (project / ".agentledger").exists()  # nothing was started or made
    given = cli("runs", "--home", str(project / "nope"), cwd=project)
    assert given.returncode == 1 and f"no embedded ledger at {project / 'nope'}" in given.stderr
    assert not (project / "nope").exists()


def test_the_ledger_is_found_from_a_subfolder_and_its_server_status(project: Path) -> None:
    recorded = subprocess.run([sys.executable, "-c", RECORD], cwd=project, capture_output=True,
                              text=True, timeout=90, env={**os.environ, "AGENTLEDGER_URL": "",
                                                          "AGENTLEDGER_HOME": ""})
    assert recorded.returncode == 0, recorded.stderr
    home = project / ".agentledger"
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    runs = cli("runs", "--json", cwd=deep)
    assert runs.returncode == 0, runs.stderr
    assert [r["run_id"] for r in json.loads(runs.stdout)] == ["order-1"]
    assert not (deep / ".agentledger").exists()  # the parent's ledger, no second one

    # A program started in the subfolder records into the same ledger too.
    again = subprocess.run([sys.executable, "-c", RECORD.replace("order-1", "order-2")],
                           cwd=deep, capture_output=True, text=True, timeout=90,
                           env={**os.environ, "AGENTLEDGER_URL": "", "AGENTLEDGER_HOME": ""})
    assert again.returncode == 0 and "started the embedded Redis" not in again.stderr
    assert not (deep / ".agentledger").exists()

    status = cli("server", "status", "--json", cwd=deep)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["home"] == str(home)
    assert info["pid"] == int((home / "redis.pid").read_text())
    # In the home, or in the runtime folder where the home's path is too long for a socket
    # (as under pytest-xdist, whose temporary paths are longer).
    assert info["url"] == f"unix://{_socket_path(home)}" and info["data_bytes"] > 0
    text = cli("server", "status", cwd=deep).stdout
    assert f"pid:       {info['pid']}" in text and str(home) in text

    assert cli("server", "stop", cwd=deep).stdout.strip() == "stopped"
    stopped = cli("server", "status", cwd=deep)
    assert stopped.returncode == 1 and "running:   False" in stopped.stdout


def modes(home: Path) -> dict[str, int]:
    return {str(p.relative_to(home)): stat.S_IMODE(p.lstat().st_mode)
            for p in [home, *home.rglob("*")] if not p.is_socket()}


def test_the_ledger_folder_and_its_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        embedded_url(home, quiet=True)
        found = modes(home)
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        files = {p: m for p, m in found.items() if (home / p).is_file()}
        assert any("aof" in p for p in files), files  # the data is among them
        assert all(m == 0o600 for m in files.values()), files
        assert all(m == 0o700 for p, m in found.items() if (home / p).is_dir()), found
    finally:
        stop_embedded(home)


def test_an_older_world_readable_ledger_is_made_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        embedded_url(home, quiet=True)
        stop_embedded(home)
        wait_gone(home)
        home.chmod(0o755)
        for p in home.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        embedded_url(home, quiet=True)
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert all(m & 0o077 == 0 for m in modes(home).values()), modes(home)
    finally:
        stop_embedded(home)


def wait_gone(home: Path) -> None:
    deadline = time.monotonic() + 10
    while (home / "redis.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def long_home(tmp_path: Path) -> Path:
    home = tmp_path / ("x" * 60) / ("y" * 60) / "home"
    assert len(str(home / "redis.sock")) > 108
    return home


def answers_ping(sock: Path) -> bool:
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=5)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


@pytest.fixture
def run_base() -> Iterator[Path]:
    """A short stand-in for /tmp (pytest's own folders are too long for a socket path)."""
    base = Path(tempfile.mkdtemp(prefix="al-"))
    base.chmod(0o1777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_long_path_puts_the_socket_in_a_private_per_user_folder(
        tmp_path: Path, run_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(run_base))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    home = long_home(tmp_path)
    try:
        url = embedded_url(home, quiet=True)
        sock = Path(url.removeprefix("unix://"))
        assert sock.parent == run_base / f"agentledger-{os.geteuid()}"
        assert stat.S_IMODE(sock.parent.lstat().st_mode) == 0o700
        assert redis.Redis(unix_socket_path=str(sock)).ping()
    finally:
        stop_embedded(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")
def test_a_socket_folder_made_by_another_user_is_refused(
        tmp_path: Path, run_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(run_base))
    monkeypatch.setattr(tempfile, "tempdir", None)
    planted = run_base / f"agentledger-{os.geteuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, NOBODY, NOBODY)  # another local user got there first
    home = long_home(tmp_path)
    with pytest.raises(EmbeddedRedisError, match=f"belongs to uid {NOBODY}"):
        embedded_url(home, quiet=True)
    assert not (home / "redis.pid").exists()  # nothing started


@pytest.mark.skipif(os.geteuid() != 0, reason="running a server as another user needs root")
def test_a_server_of_another_user_at_the_socket_gets_no_records(run_base: Path) -> None:
    """Another user's redis-server answering at our socket path (planted there) is refused
    before a single record is written to it."""
    shared = run_base / "theirs"
    shared.mkdir()
    shared.chmod(0o777)
    their_sock = shared / "s.sock"
    theirs = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(their_sock),
         "--unixsocketperm", "777", "--save", "", "--appendonly", "no", "--dir", str(shared)],
        user=NOBODY, group=NOBODY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = run_base / "home"
    home.mkdir(mode=0o700)
    try:
        # Wait until it answers, not until the file exists: redis-server binds the socket file
        # before it listens, and a socket nobody listens on is a stale one the ledger replaces.
        while not answers_ping(their_sock):
            assert theirs.poll() is None, "their redis-server exited"
            time.sleep(0.02)
        planted = home / "redis.sock"
        shutil.move(str(their_sock), planted)
        os.chown(planted, os.geteuid(), os.getegid())  # even the file looks like ours
        with pytest.raises(EmbeddedRedisError, match=f"runs as uid {NOBODY}"):
            embedded_url(home, quiet=True)
        probe = redis.Redis(unix_socket_path=str(planted))
        assert probe.dbsize() == 0  # not a record written
        probe.close()
        check = run_child("from agentledger import Ledger\nLedger.from_url()",
                          env={"AGENTLEDGER_HOME": str(home), "AGENTLEDGER_URL": ""})
        assert check.returncode != 0 and "runs as uid" in check.stderr
    finally:
        theirs.terminate()
        theirs.wait(10)


def test_server_status_of_a_stopped_ledger(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    status = server_status(home)
    assert status["running"] is False and status["pid"] is None and status["home"] == str(home)


def test_the_cli_reads_agentledger_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        embedded_url(home, quiet=True)
        proc = cli("runs", "--json", cwd=REPO, env={"AGENTLEDGER_HOME": str(home)})
        assert proc.returncode == 0 and json.loads(proc.stdout) == []
        by_flag = cli("runs", "--home", str(home), cwd=tmp_path)
        assert by_flag.returncode == 0 and by_flag.stdout.startswith("RUN")
    finally:
        stop_embedded(home)


def test_no_socket_leaks_from_a_stale_file(tmp_path: Path) -> None:
    """A socket file whose server died is replaced, not refused."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(home / "redis.sock"))
    stale.close()  # the file stays, nothing listens
    try:
        assert embedded_url(home, quiet=True).startswith("unix://")
    finally:
        stop_embedded(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")
def test_another_users_ledger_folder_above_is_passed_over(project: Path) -> None:
    planted = project / ".agentledger"
    planted.mkdir(mode=0o777)
    os.chown(planted, NOBODY, NOBODY)
    deep = project / "sub"
    deep.mkdir()
    proc = cli("runs", cwd=deep)
    assert proc.returncode == 1 and "no embedded ledger found" in proc.stderr
    assert os.listdir(planted) == []  # nothing started in it
