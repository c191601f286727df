"""Guarantees 1-3 with real crashes: a child process SIGKILLed at every step boundary, then a
fresh process with the same run id."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from _support import REPO, killed, run_child
from agentledger import Ledger, RunStatus

CHILD = REPO / "tests" / "core" / "children" / "pipeline_child.py"
EXPECTED = {"sync": 21, "async": 720}
STEPS = ["s1", "s2", "s3", "s4", "s5"]


def effects(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def start(redis_url: str, prefix: str, run_id: str, mode: str, fx: Path, **env: str):  # type: ignore[no-untyped-def]
    return run_child(CHILD, redis_url, prefix, run_id, mode, str(fx), env=env)


def last_json(out: str) -> dict[str, object]:
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


POINTS = ["before_claim", "after_claim", "in_body", "before_record", "after_record"]
# The five steps are the same call; a boundary differs only by where its step stands: the first
# (nothing sent before it), a middle one, the last (the run's end, a barrier, follows). So every
# boundary of steps 1, 3 and 5, for both APIs, at "sync" and at "async". "exit" is "async" under
# another name for the ledger (the session pipelines at any level but "sync",
# core/_hotpath.py): every boundary of the middle step and the last step's end show it is
# passed through and holds.
CASES = [(m, p, n, level) for level in ("sync", "async") for m in ("sync", "async")
         for p in POINTS for n in (1, 3, 5)] + [
    (m, p, n, "exit") for m in ("sync", "async")
    for p, n in [*((p, 3) for p in POINTS), ("after_record", 5)]]

def completed_keys(redis_url: str, prefix: str, run_id: str) -> set[str]:
    """The idempotency keys of the run's steps that Redis holds as completed."""
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        return {r.ik for r in ledger.steps(run_id) if r.status == "completed"}
    finally:
        ledger.close()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "point", "n", "durability"), CASES)
def test_killed_at_every_boundary_resumes_without_repeating(
        redis_url: str, prefix: str, tmp_path: Path, mode: str, point: str, n: int,
        durability: str) -> None:
    fx = tmp_path / "effects.jsonl"
    env = {"KILL_IN_BODY": str(n)} if point == "in_body" else {"AGENTLEDGER_CRASH_AT": f"{point}:{n}"}
    env["DURABILITY"] = durability
    first = start(redis_url, prefix, "r", mode, fx, **env)
    assert killed(first), first.stderr

    crashed = STEPS[n - 1]
    before = Counter(e["step"] for e in effects(fx))
    # What the dead process executed: steps before n always, step n only if its body ran.
    body_ran = point in ("in_body", "before_record", "after_record")
    assert set(before) == set(STEPS[: n - 1] + ([crashed] if body_ran else []))
    kept = completed_keys(redis_url, prefix, "r")

    second = start(redis_url, prefix, "r", mode, fx, DURABILITY=durability)
    assert second.returncode == 0, second.stdout + second.stderr
    assert last_json(second.stdout) == {"result": EXPECTED[mode]}

    runs = Counter(e["step"] for e in effects(fx))
    in_doubt = point in ("in_body", "before_record")  # effect done, outcome not recorded
    for s in STEPS:
        keys = {e["key"] for e in effects(fx) if e["step"] == s}
        assert len(keys) == 1, (s, keys)  # a re-run used the same idempotency key
        if keys & kept:  # Redis kept it as completed after the kill: never run again
            assert runs[s] == before[s] == 1, (s, runs)
        elif durability == "sync":
            assert runs[s] == (2 if s == crashed and in_doubt else 1), (s, runs)
        else:
            # Records sent since the last barrier may be lost with the killed process
            # (docs/durability.md): a lost step runs once more, with its key.
            assert runs[s] in (1, 2), (s, runs)
    if durability == "sync":
        assert kept == {e["key"] for e in effects(fx) if e["step"] in STEPS[: n - 1]} | (
            {e["key"] for e in effects(fx) if e["step"] == crashed}
            if point == "after_record" else set())

    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        run = ledger.get_run("r")
        assert run is not None and run.status == RunStatus.COMPLETED
        recs = ledger.steps("r")
        assert [r.status for r in recs] == ["completed"] * 5
        attempts = {r.seq: r.attempts for r in recs}
        # An intent recorded without an outcome costs a second attempt (at "async" the intent
        # may have been lost, or kept with its outcome lost).
        second_attempt = point in ("after_claim", "in_body", "before_record")
        if durability == "sync":
            assert attempts[n] == (2 if second_attempt else 1)
        else:
            assert attempts[n] in (1, 2)
    finally:
        ledger.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_in_doubt_policy_fail_stops_the_run_until_a_person_decides(
        redis_url: str, prefix: str, tmp_path: Path, mode: str) -> None:
    fx = tmp_path / "effects.jsonl"
    assert killed(start(redis_url, prefix, "r", mode, fx, KILL_IN_BODY="3", POLICY="fail"))
    second = start(redis_url, prefix, "r", mode, fx, POLICY="fail")
    assert second.returncode == 3
    assert last_json(second.stdout)["error"] == "InDoubtStepError"
    assert Counter(e["step"] for e in effects(fx)) == {"s1": 1, "s2": 1, "s3": 1}

    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        run = ledger.get_run("r")
        assert run is not None and run.status == RunStatus.FAILED
        assert "InDoubtStepError" in run.last_error
        pending = ledger.pending_approvals("r")
        assert [p.name for p in pending] == ["add" if mode == "sync" else "amul"]
        ledger.decide("r", approved=True, by="ops", note="mail log shows nothing sent")
    finally:
        ledger.close()
    third = start(redis_url, prefix, "r", mode, fx, POLICY="fail")
    assert third.returncode == 0, third.stdout + third.stderr
    assert last_json(third.stdout) == {"result": EXPECTED[mode]}
    runs = Counter(e["step"] for e in effects(fx))
    assert runs == {"s1": 1, "s2": 1, "s3": 2, "s4": 1, "s5": 1}


def test_in_doubt_policy_ask_turns_the_step_into_an_approval(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    fx = tmp_path / "effects.jsonl"
    assert killed(start(redis_url, prefix, "r", "sync", fx, KILL_IN_BODY="2", POLICY="ask"))
    second = start(redis_url, prefix, "r", "sync", fx, POLICY="ask")
    assert second.returncode == 3
    assert last_json(second.stdout)["error"] == "ApprovalPending"

    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        run = ledger.get_run("r")
        assert run is not None and run.status == RunStatus.WAITING
        (pending,) = ledger.pending_approvals()
        assert pending.run_id == "r" and pending.doubt == 1
        # The person checked: the effect did happen, and its result was 6.
        ledger.decide("r", pending.key, approved=True, by="ops", payload=6)
    finally:
        ledger.close()
    third = start(redis_url, prefix, "r", "sync", fx, POLICY="ask")
    assert third.returncode == 0, third.stdout + third.stderr
    assert last_json(third.stdout) == {"result": 21}
    assert Counter(e["step"] for e in effects(fx)) == {"s1": 1, "s2": 1, "s3": 1, "s4": 1, "s5": 1}


def test_rejected_in_doubt_step_fails_with_the_rejection(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    fx = tmp_path / "effects.jsonl"
    assert killed(start(redis_url, prefix, "r", "sync", fx, KILL_IN_BODY="2", POLICY="ask"))
    assert start(redis_url, prefix, "r", "sync", fx, POLICY="ask").returncode == 3
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        ledger.decide("r", approved=False, by="ops", note="do not retry")
    finally:
        ledger.close()
    third = start(redis_url, prefix, "r", "sync", fx, POLICY="ask")
    assert third.returncode == 3
    assert last_json(third.stdout) == {"error": "StepRejected",
                                       "message": "rejected by ops: do not retry"}
    assert Counter(e["step"] for e in effects(fx)) == {"s1": 1, "s2": 1}


def test_a_worker_recovers_stalled_runs(redis_url: str, prefix: str, tmp_path: Path) -> None:
    fx = {rid: tmp_path / f"{rid}.jsonl" for rid in ("a", "b")}
    for rid, n in (("a", 2), ("b", 4)):
        assert killed(start(redis_url, prefix, rid, "sync", fx[rid], KILL_IN_BODY=str(n)))
    ledger = Ledger.from_url(redis_url, prefix=prefix)  # lease 15 s: not expired yet
    try:
        stalled = ledger.list_runs(status="stalled")
        assert {r.run_id for r in stalled} == {"a", "b"}  # their owners' pids are gone

        def resume(run: object) -> None:
            rid = run.run_id  # type: ignore[attr-defined]
            assert start(redis_url, prefix, rid, "sync", fx[rid]).returncode == 0

        assert sorted(ledger.recover(resume)) == ["a", "b"]
        assert ledger.list_runs(status="stalled") == []
        assert {r.status for r in ledger.list_runs()} == {RunStatus.COMPLETED}
        assert ledger.recover(resume) == []
    finally:
        ledger.close()
    for rid, n in (("a", 2), ("b", 4)):
        runs = Counter(e["step"] for e in effects(fx[rid]))
        assert runs == {s: (2 if s == STEPS[n - 1] else 1) for s in STEPS}
