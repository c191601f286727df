"""Worker processes for tests: ``python -m agentledger worker worker_app:app`` children,
their effects file, and the checks every worker test makes on it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from _support import REPO

CHILDREN = REPO / "tests" / "core" / "children"
sys.path.insert(0, str(CHILDREN))


class Workers:
    """Worker processes of one test, stopped by pid at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentledger", "worker", "worker_app:app", *args],
            env={**self.env, **env}, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agentledger", "--url", self.env["AL_URL"],
                               "--prefix", self.env["AL_PREFIX"], *args],
                              env=self.env, cwd=str(REPO), capture_output=True, text=True,
                              timeout=60)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.logs.glob("worker-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def effects(w: Workers, phase: str = "start") -> list[dict[str, Any]]:
    path = Path(w.env["AL_EFFECTS"])
    if not path.exists():
        return []
    # Only whole lines: a worker may be writing the last one while it is read (CI).
    text = path.read_text()
    whole = text[:text.rfind("\n") + 1]
    lines = [json.loads(x) for x in whole.splitlines() if x.strip()]
    return [x for x in lines if x["phase"] == phase]


def wait_for(cond: Any, timeout: float, what: str, w: Workers) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{w.log()}")
        time.sleep(0.05)


def assert_effects_once(w: Workers, in_flight_allowed: int = 0) -> None:
    """Every step's effect happened once; at most ``in_flight_allowed`` steps twice, and
    then with the same idempotency key (the step in flight when a worker died)."""
    by_step: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in effects(w):
        by_step[(e["run"], e["step"])].append(e["key"])
    twice = {k: v for k, v in by_step.items() if len(v) > 1}
    assert len(twice) <= in_flight_allowed, twice
    for keys in twice.values():
        assert len(keys) == 2 and len(set(keys)) == 1, keys


