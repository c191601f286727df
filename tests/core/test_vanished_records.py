"""Records that vanish under a live run (`delete`, eviction, a flush) and a Redis that forgot its
scripts: fencing tokens never restart, a missing record is a CorruptRecordError naming its key,
and counters are counted once."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

import agentledger
from _support import OFFLINE_ENV, REPO, RedisServer
from agentledger import CorruptRecordError, Ledger, RunBusyError, StepCall
from agentledger._cli import main

CHILD = REPO / "tests" / "core" / "children" / "pipeline_child.py"


def spawn(url: str, prefix: str, fx: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), url, prefix, "r", "sync", str(fx)],
                            env={**os.environ, **OFFLINE_ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO))


def effects(fx: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in fx.read_text().splitlines()] if fx.exists() else []


def test_deleting_a_live_run_is_refused_and_forcing_it_fences_the_holder_out(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    fx = tmp_path / "effects.jsonl"
    holder = spawn(redis_url, prefix, fx, STEP_SLEEP="1.0")
    deadline = time.monotonic() + 30
    while not effects(fx):  # the holder is inside step 1's body, its lease live
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.02)
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    with pytest.raises(RunBusyError, match="force"):
        ledger.delete_run("r")
    assert main(["--url", redis_url, "--prefix", prefix, "delete", "r"], out=io.StringIO()) == 1
    assert ledger.get_run("r") is not None
    old_fence = ledger.get_run("r").fence  # type: ignore[union-attr]
    assert main(["--url", redis_url, "--prefix", prefix, "delete", "r", "--force"],
                out=io.StringIO()) == 0
    second = spawn(redis_url, prefix, fx, STEP_SLEEP="1.0")  # opens the run anew
    out_second = second.communicate(timeout=90)
    out_holder = holder.communicate(timeout=90)
    assert second.returncode == 0, out_second
    assert holder.returncode == 3, out_holder
    assert json.loads(out_holder[0].splitlines()[-1])["error"] in ("FencedOutError",
                                                                    "CorruptRecordError")
    done = effects(fx)
    by_holder = [e["step"] for e in done if e["pid"] == holder.pid]
    assert by_holder == ["s1"]  # fenced out before its next step
    assert Counter(e["step"] for e in done if e["pid"] == second.pid) == {
        "s1": 1, "s2": 1, "s3": 1, "s4": 1, "s5": 1}
    run = ledger.get_run("r")
    assert run is not None and run.status == "completed" and run.fence > old_fence
    ledger.close()


def test_fences_keep_growing_after_a_run_is_deleted(ledger: Ledger) -> None:
    with ledger.run("r") as first:
        pass
    ledger.delete_run("r")
    with ledger.run("r") as again:
        pass
    assert again.fence > first.fence


def test_an_outcome_for_a_step_whose_intent_vanished_is_a_corrupt_record(
        ledger: Ledger, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(CorruptRecordError) as caught, ledger.run("r") as session:
        start = session.begin(StepCall(kind="tool", name="send_email", inputs={"to": "a"}))
        client.hdel(session.keys.steps, f"m:{start.key}")  # evicted, say
        session.record(start, "sent")
    assert caught.value.key == f"{ledger.keys('r').steps} m:{start.key}"
    client.close()


def test_a_run_record_vanishing_under_its_holder_is_a_corrupt_record(
        ledger: Ledger, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(CorruptRecordError) as caught, ledger.run("r") as session:
        start = session.begin(StepCall(kind="tool", name="send_email", inputs={"to": "a"}))
        client.delete(session.keys.run)  # flushed, say
        session.record(start, "sent")
    assert caught.value.key == ledger.keys("r").run
    client.close()


@agentledger.step
def lookup(n: int) -> int:
    return n * 2


def test_every_counter_is_right_after_redis_restarts_between_runs(
        own_redis: RedisServer) -> None:
    ledger = Ledger.from_url(own_redis.url, prefix="t")
    with ledger.run("r"):
        lookup(1)
        lookup(2)
    for replays in (1, 2):
        own_redis.restart()  # a fresh process: its script cache is empty (NOSCRIPT)
        with ledger.run("r") as session:
            assert [lookup(1), lookup(2)] == [2, 4]
        assert session.replayed == 2
        steps = ledger.steps("r")
        assert [(s.attempts, s.replays) for s in steps] == [(1, replays), (1, replays)]
        run = ledger.get_run("r")
        assert run is not None and (run.steps_total, run.steps_done) == (2, 2)
    out = io.StringIO()
    assert main(["--url", own_redis.url, "--prefix", "t", "show", "r"], out=out) == 0
    assert re.search("replayed [x×]2", out.getvalue()) and not re.search("[x×]4", out.getvalue())
    ledger.close()
