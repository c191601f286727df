"""A tool killed inside its body, after its side effect (the process SIGKILLs itself from the
email tool), then a fresh process with the same run id: the in-doubt policies through CrewAI."""

from __future__ import annotations

import json
from pathlib import Path

from crew_fakes import read_effects

from _support import killed, run_child
from agentledger import Ledger, RunStatus

CHILD = Path(__file__).resolve().parent / "children" / "crew_child.py"


def _last_json(stdout: str) -> dict[str, str]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout[-2000:]
    return dict(json.loads(lines[-1]))


def test_in_doubt_email_reruns_with_the_same_idempotency_key(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    env = {"CREW_EFFECTS": str(effects), "CREW_KILL_AFTER_EMAIL": "1"}
    first = run_child(CHILD, redis_url, prefix, "doubt-1", env=env)
    assert killed(first), first.stderr[-2000:]
    assert [e.split(":")[1] for e in read_effects(effects) if e.startswith("email:")] == [
        "team@example.com"]
    second = run_child(CHILD, redis_url, prefix, "doubt-1", env={"CREW_EFFECTS": str(effects)})
    assert second.returncode == 0, second.stderr[-2000:]
    assert _last_json(second.stdout) == {"raw": "editor done after 0 results"}
    team = [e for e in read_effects(effects) if e.startswith("email:team@example.com:")]
    # The crash left the first send in doubt: it ran again under the same idempotency key,
    # which a mail API uses to drop the duplicate.
    assert len(team) == 2 and len({e.rsplit(":", 1)[1] for e in team}) == 1


def test_in_doubt_policy_fail_stops_until_a_person_says_it_happened(
        redis_url: str, prefix: str, tmp_path: Path, ledger: Ledger) -> None:
    effects = tmp_path / "effects.txt"
    env = {"CREW_EFFECTS": str(effects), "CREW_KILL_AFTER_EMAIL": "1"}
    first = run_child(CHILD, redis_url, prefix, "doubt-2", "fail", env=env)
    assert killed(first), first.stderr[-2000:]
    plain = {"CREW_EFFECTS": str(effects)}
    second = run_child(CHILD, redis_url, prefix, "doubt-2", "fail", env=plain)
    result = _last_json(second.stdout)
    assert result["error"] == "InDoubtStepError", result
    assert "send_email" in result["message"]
    run = ledger.get_run("doubt-2")
    assert run is not None and run.status == RunStatus.FAILED
    step = next(s.key for s in ledger.steps("doubt-2") if "/tool:send_email" in s.key)
    # The person checked the mail log: it was sent. Its result is recorded, not re-run.
    ledger.decide("doubt-2", step, approved=True, by="ops", payload="email to team sent")
    third = run_child(CHILD, redis_url, prefix, "doubt-2", "fail", env=plain)
    assert _last_json(third.stdout) == {"raw": "editor done after 0 results"}, third.stderr[-2000:]
    team = [e for e in read_effects(effects) if e.startswith("email:team@example.com:")]
    assert len(team) == 1
