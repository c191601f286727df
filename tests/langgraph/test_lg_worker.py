"""A LangGraph graph as an App pipeline: a worker process SIGKILLed inside a tool call (body
done, outcome not recorded), and another worker finishes the run with every call once (the
one in flight twice, with the same idempotency key) and the same final state as a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from _support import OFFLINE_ENV, REPO, start_worker, stop_processes
from agentledger import Ledger, RunStatus

CHILDREN = REPO / "tests" / "langgraph" / "children"
sys.path.insert(0, str(CHILDREN))
from lg_worker_app import build  # noqa: E402


def worker(env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    return start_worker("lg_worker_app:app", env, log, concurrency=1, **extra)


def test_a_killed_worker_s_graph_run_is_finished_by_another(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(CHILDREN), "AL_URL": redis_url,
           "AL_PREFIX": prefix, "LG_EFFECTS": str(effects)}
    ledger = Ledger.from_url(redis_url, prefix=prefix, lease_ms=2000)
    app = build(ledger)
    a = worker(env, tmp_path / "a.log", AGENTLEDGER_CRASH_AT="before_record:3")
    b = None
    try:
        app.submit("notify", None, run_id="crashed")
        assert a.wait(120) == -signal.SIGKILL, (tmp_path / "a.log").read_text()
        b = worker(env, tmp_path / "b.log")
        crashed = app.result("crashed", timeout=120)
        app.submit("notify", None, run_id="clean")
        clean = app.result("clean", timeout=120)
        assert ledger.get_run("crashed").status == RunStatus.COMPLETED  # type: ignore[union-attr]
    finally:
        stop_processes(a, b)
        ledger.close()
    assert crashed == clean and len(clean["notes"]) == 5
    per_key = Counter(x.split("|")[-1] for x in effects.read_text().splitlines())
    assert len(per_key) == 2 * 5  # five side effects per run, each under a key of its own
    # Once each, but a call in flight when the worker died: twice, under the same key. The
    # plan's two send_email calls run in parallel, so the kill (before the third record) can
    # find two in flight: one body done with its outcome written but not yet acknowledged
    # (at 'sync' a killed process's unread reply resets the socket and Redis drops it), the
    # other before its record.
    assert sorted(per_key.values()) in ([1] * 9 + [2], [1] * 8 + [2, 2])
