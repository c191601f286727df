"""Crash matrix driver for the CrewAI adapter (run by tests/crewai/test_crew_crash_matrix.py).
Writes WORKDIR/matrix.json.

``import crewai`` takes seconds, so this process imports CrewAI once and then forks one child
process per attempt: each child imports agentledger (so that it reads its own
``AGENTLEDGER_CRASH_AT``), builds the crew afresh, attaches a handler and kicks off. A crashing
child dies by SIGKILL at the named point; the next child is a new process with the same run
id. For each point, n = 1, 2, ... until the child no longer crashes (n passed the last
boundary of that kind). Prints one JSON document describing every case; the test asserts.

Usage: crew_matrix.py URL PREFIX WORKDIR MODE KICK PROCESS HUMAN [DURABILITY [PHASES]]
  MODE react|native, KICK sync|async, PROCESS seq|hier, HUMAN 0|1,
  DURABILITY sync|async|exit (the handler's level; default sync),
  PHASES the phases to crash in, comma-separated (default: all; with HUMAN=1 a phase ends at
  each of the two decisions)

After each kill the case also keeps what Redis held then: the idempotency keys of the steps
recorded as completed, and the effects so far. A step Redis kept as completed must never run
again (at ``async``/``exit`` the unacknowledged suffix may be lost and re-run; not that).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crew_fakes

POINTS = ("before_claim", "after_claim", "before_record", "after_record")
FEEDBACK = "FEEDBACK: make it shorter"


def kickoff_child(url: str, prefix: str, run_id: str, crash: str | None, effects: Path,
                  result: Path, mode: str, kick: str, process: str, human: bool,
                  durability: str) -> int:
    """Fork a child that runs one kickoff; return its wait status."""
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    code = 1
    try:
        if crash:
            os.environ["AGENTLEDGER_CRASH_AT"] = crash
        else:
            os.environ.pop("AGENTLEDGER_CRASH_AT", None)
        os.environ["CREW_EFFECTS"] = str(effects)
        from agentledger import ApprovalPending, Ledger
        from agentledger.crewai import DurableCrewHandler

        ledger = Ledger.from_url(url, prefix=prefix, lease_ms=2000)
        crew = crew_fakes.build_crew(native=mode == "native", hierarchical=process == "hier",
                                     human_input=human)
        handler = DurableCrewHandler(run_id, ledger=ledger, durability=durability).attach(crew)
        out: dict[str, Any] = {}
        try:
            if kick == "async":
                import asyncio

                output = asyncio.run(crew.akickoff(inputs={"topic": "launch"}))
            else:
                output = crew.kickoff(inputs={"topic": "launch"})
            out["raw"] = output.raw
            out["tasks"] = [t.raw for t in output.tasks_output]
        except ApprovalPending as e:
            out["waiting"] = e.step_key
        session = handler.last_session
        assert session is not None
        out["executed"] = session.executed
        out["pipelined"] = session._hot.pipelined  # records sent without waiting
        out["replayed"] = session.replayed
        run = ledger.get_run(run_id)
        out["status"] = None if run is None else str(run.status)
        out["tool_steps"] = sum("/tool:" in s.key for s in ledger.steps(run_id))
        result.write_text(json.dumps(out))
        code = 0
    except BaseException as e:  # reported to the parent through the result file
        result.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    finally:
        os._exit(code)


def in_child(work: Path, fn: Any) -> Any:
    """Run ``fn()`` in a forked child and return its JSON result: this process never
    imports agentledger, so that each kickoff child reads its own AGENTLEDGER_CRASH_AT."""
    out = work / f"helper-{os.getpid()}.json"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out.write_text(json.dumps(fn()))
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)
    value = json.loads(out.read_text())
    out.unlink()
    return value


def decide(url: str, prefix: str, run_id: str, step: str, note: str | None) -> Any:
    from agentledger import Ledger

    ledger = Ledger.from_url(url, prefix=prefix)
    try:
        return ledger.decide(run_id, step, approved=True, by="tester", note=note)
    finally:
        ledger.close()


def completed_keys(url: str, prefix: str, run_id: str) -> list[str]:
    """The idempotency keys of the run's steps that Redis holds as completed."""
    from agentledger import Ledger

    ledger = Ledger.from_url(url, prefix=prefix)
    try:
        return [s.ik for s in ledger.steps(run_id) if str(s.status) == "completed"]
    finally:
        ledger.close()


def run_case(url: str, prefix: str, work: Path, run_id: str, crash: str | None,
             crash_phase: int, args: tuple[str, str, str, bool, str]) -> dict[str, Any]:
    """Kick off until the run completes: the crash (if any) hits in phase ``crash_phase``
    (a phase ends at a person's decision), then plain restarts with the same run id."""
    effects = work / f"{run_id}.effects"
    result = work / f"{run_id}.json"
    case: dict[str, Any] = {"run_id": run_id, "crash": crash, "crash_phase": crash_phase,
                            "crashed": False, "attempts": 0, "decisions": []}
    phase = 0
    pending_crash = crash
    while case["attempts"] < 12:
        case["attempts"] += 1
        spec = pending_crash if phase == crash_phase else None
        result.unlink(missing_ok=True)
        status = kickoff_child(url, prefix, run_id, spec, effects, result, *args)
        if spec is not None:
            pending_crash = None
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                case["crashed"] = True
                case["kept_completed"] = in_child(
                    work, functools.partial(completed_keys, url, prefix, run_id))
                case["effects_at_kill"] = crew_fakes.read_effects(effects)
                continue
        if os.WIFSIGNALED(status):
            case["error"] = f"child died by signal {os.WTERMSIG(status)}"
            break
        out = json.loads(result.read_text()) if result.exists() else {"error": "no result"}
        if "error" in out:
            case["error"] = out["error"]
            break
        if "waiting" in out:
            # The person: feedback on the first review, approval on the second.
            note = None if case["decisions"] else FEEDBACK
            step = out["waiting"]
            in_child(work, functools.partial(decide, url, prefix, run_id, step, note))
            case["decisions"].append(out["waiting"])
            phase += 1
            continue
        case.update(out)
        break
    case["effects"] = crew_fakes.read_effects(effects)
    return case


def main() -> None:
    url, prefix, workdir, mode, kick, process, human_flag = sys.argv[1:8]
    durability = sys.argv[8] if len(sys.argv) > 8 else "sync"
    human = human_flag == "1"
    work = Path(workdir)
    args = (mode, kick, process, human, durability)
    cases = [run_case(url, prefix, work, "baseline", None, 0, args)]
    phases = (0, 1) if human else (0,)
    if len(sys.argv) > 9:
        phases = tuple(int(p) for p in sys.argv[9].split(","))
    for phase in phases:
        for point in POINTS:
            n = 1
            while n < 60:
                case = run_case(url, prefix, work, f"{point}-{phase}-{n}", f"{point}:{n}",
                                phase, args)
                cases.append(case)
                if not case["crashed"] or "error" in case:
                    break
                n += 1
    (work / "matrix.json").write_text(json.dumps(cases))


if __name__ == "__main__":
    main()
