"""The crash matrix: a real crew killed (SIGKILL) at every step boundary, then restarted as
a new process with the same run id, for ReAct and native function calling, ``kickoff`` and
``akickoff``, sequential and hierarchical processes, and human input; each at the durability
level ``sync``, and a subset at ``async`` (``LEVELS`` says why it covers every boundary).

Each variant runs ``children/crew_matrix.py`` (one process that imports CrewAI once and forks
a fresh child per attempt); the variants are separate tests, which pytest-xdist runs in
parallel. The assertions are here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from _support import OFFLINE_ENV, REPO, tmpdir

DRIVER = Path(__file__).resolve().parent / "children" / "crew_matrix.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# name: (mode, kick, process, human). Each of ReAct / native tool calling, kickoff /
# akickoff and sequential / hierarchical meets each of the others at least once.
VARIANTS = {
    "react-kickoff-seq": ("react", "sync", "seq", "0"),
    "native-akickoff-seq": ("native", "async", "seq", "0"),
    "native-kickoff-hier": ("native", "sync", "hier", "0"),
    "react-akickoff-hier": ("react", "async", "hier", "0"),
    "react-kickoff-human": ("react", "sync", "seq", "1"),
}


# (variant, durability level, phases to crash in). Every variant at "sync". At "async", a
# subset that still meets every boundary kind at every position, chosen for what the level
# changes: how records are sent (kickoff's thread, akickoff's event loop: native-kickoff-hier
# and react-akickoff-hier, both with the manager's delegations) and where they are
# acknowledged (an approval, the end of the kickoff). ReAct or native parsing does not reach
# the sending. The human variant crashes at "async" only after its first decision: records sent
# before that approval were acknowledged, so none of them may run again (its phase-0
# boundaries are those of react-kickoff-seq, at "sync"). For the ledger, "exit" is "async"
# under another name (LangGraph's "exit" is about its checkpoints; a crew has none): the session
# pipelines at any level but "sync" (core/_hotpath.py); test_crew_handler.py checks that the
# handler passes "exit" through. The async rows cost about as much CPU as the five sync rows.
LEVELS = [*((v, "sync", "") for v in VARIANTS),
          ("native-kickoff-hier", "async", ""), ("react-akickoff-hier", "async", ""),
          ("react-kickoff-human", "async", "1")]

def run_variant(redis_url: str, name: str, durability: str = "sync",
                phases: str = "") -> list[dict[str, Any]]:
    """Run one variant's driver to its end and return its cases."""
    from conftest import delete_prefix

    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO / "tests")}
    env.pop("AGENTLEDGER_CRASH_AT", None)
    work = tmpdir("al-crew-matrix-")
    prefix = f"altest-crewmx-{name}-{durability}-{uuid.uuid4().hex[:8]}"
    try:
        with (work / "stderr.txt").open("w") as stderr:
            proc = subprocess.run(
                [sys.executable, str(DRIVER), redis_url, prefix, str(work), *VARIANTS[name],
                 durability, *([phases] if phases else [])],
                env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=stderr, timeout=900)
        err = (work / "stderr.txt").read_text(errors="replace")
        assert proc.returncode == 0, f"{name} driver failed:\n{err[-3000:]}"
        return list(json.loads((work / "matrix.json").read_text()))
    finally:
        delete_prefix(redis_url, prefix)
        shutil.rmtree(work, ignore_errors=True)


def _effect_counts(effects: list[str], kind: str) -> Counter[str]:
    return Counter(e for e in effects if e.startswith(kind + ":"))


def _kinds(effects: list[str]) -> Counter[str]:
    """Effect lines without the idempotency key (it differs between runs)."""
    return Counter(e.rsplit(":", 1)[0] if e.startswith("email:") else e for e in effects)


def _check_kept_steps_not_rerun(case: dict[str, Any], where: str) -> None:
    """What Redis held as completed when the killed process was gone never runs again: its
    effect lines (which carry the step's idempotency key) are the same after the restart."""
    if not case["crashed"]:
        return
    kept = set(case["kept_completed"])
    at_kill = Counter(case["effects_at_kill"])
    for line, n in Counter(case["effects"]).items():
        if line.rsplit(":", 1)[-1] in kept:
            assert n == at_kill[line], f"{where}: {line} ran again after it was recorded"


@pytest.mark.parametrize(("variant", "durability", "phases"), LEVELS,
                         ids=["-".join(filter(None, (v, d, p and f"phase{p}")))
                              for v, d, p in LEVELS])
def test_crew_killed_at_every_boundary_resumes_without_repeating(
        redis_url: str, variant: str, durability: str, phases: str) -> None:
    cases = run_variant(redis_url, variant, durability, phases)
    baseline = cases[0]
    assert baseline["run_id"] == "baseline"
    assert "error" not in baseline, baseline
    assert baseline["status"] == "completed"
    assert baseline["pipelined"] == (durability != "sync")
    human = VARIANTS[variant][3] == "1"
    if human:
        assert baseline["raw"] == "editor done after 0 results with 1 feedback"
        assert len(baseline["decisions"]) == 2
    emails = {e.split(":")[1] for e in baseline["effects"] if e.startswith("email:")}
    assert emails == {"team@example.com", "press@example.com"}
    tool_steps = baseline["tool_steps"]  # delegations to a coworker are tool steps too
    assert tool_steps >= 2

    crashed_per_point: Counter[str] = Counter()
    for case in cases[1:]:
        where = f"{variant} {durability} {case['run_id']}: {json.dumps(case)[:1500]}"
        assert "error" not in case, where + ": " + case.get("error", "")
        assert case["status"] == "completed", where
        # The same answers as a run that never crashed.
        assert case["raw"] == baseline["raw"], where
        assert case["tasks"] == baseline["tasks"], where
        point = case["crash"].split(":")[0]
        if case["crashed"]:
            crashed_per_point[f"{point}-{case['crash_phase']}"] += 1
        _check_kept_steps_not_rerun(case, where)
        per_email = _effect_counts(case["effects"], "email")
        assert {e.split(":")[1] for e in per_email} == emails, where
        for email_to in emails:
            lines = [e for e in case["effects"] if e.startswith(f"email:{email_to}:")]
            keys = {line.rsplit(":", 1)[1] for line in lines}
            assert len(keys) == 1, f"{where}: one idempotency key per email, got {keys}"
            if durability == "sync":
                # A repeat only for a step caught inside its body (before_record: in doubt,
                # re-run under the same idempotency key).
                assert 1 <= len(lines) <= (2 if point == "before_record" else 1), where
            else:
                # Records sent since the last barrier may be lost with the killed process
                # (docs/durability.md): such a step runs once more, with its key.
                assert 1 <= len(lines) <= 2, where
        base, seen = _kinds(baseline["effects"]), _kinds(case["effects"])
        assert not base - seen, f"{where}: missing {base - seen}"
        if durability == "sync":
            # A resumed run re-executes at most the one step that was in flight.
            assert (seen - base).total() <= 1, f"{where}: {seen - base} extra executions"
        else:
            # Each lost step at most once more: never more than twice what a clean run did.
            assert all(n <= 2 * base[e] for e, n in seen.items()), f"{where}: {seen} vs {base}"

    # Killed at every boundary: once per tool step for the claim points, once per
    # executed step (LLM calls, tool calls, tasks) for the record points.
    crash_phases = (tuple(int(p) for p in phases.split(",")) if phases
                    else (0, 1) if human else (0,))
    for phase in crash_phases:
        if phase == 0 and not human:
            assert crashed_per_point[f"before_claim-{phase}"] == tool_steps
            assert crashed_per_point[f"after_claim-{phase}"] == tool_steps
            assert crashed_per_point[f"before_record-{phase}"] == baseline["executed"]
            assert crashed_per_point[f"after_record-{phase}"] == baseline["executed"]
        for point in ("before_record", "after_record"):
            assert crashed_per_point[f"{point}-{phase}"] >= 1, (variant, point, phase)
