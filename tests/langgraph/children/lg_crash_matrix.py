"""Crash matrix child: kill the pipeline at every call boundary, restart it, report.

    python lg_crash_matrix.py REDIS_URL PREFIX OUTDIR sync|async|func|agent DURABILITY

Imports LangGraph once, then for each case forks a process that runs the pipeline and SIGKILLs
itself at the chosen boundary (``agentledger``'s crash points), waits for it, and forks a fresh
process that starts the same thread again and runs it to its end. Prints one JSON line per
case: the crash, how both processes ended, the side effects and the final state. The first
line is the uncrashed baseline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lg_pipeline as pipeline

from agentledger import Ledger, StepKind, _faults
from agentledger.langgraph import DurableCheckpointer


def run_once(url: str, prefix: str, thread: str, mode: str, durability: str) -> None:
    """One process's go at the thread; writes the final state next to the effects file."""
    ledger = Ledger.from_url(url, prefix=prefix, lease_ms=2000)
    saver = DurableCheckpointer(ledger)
    if mode == "func":
        graph = pipeline.build_functional(saver)
    elif mode == "agent":
        graph = pipeline.build_agent(saver)
    else:
        graph = pipeline.build(saver, use_async=mode == "async")
    config = {"configurable": {"thread_id": thread}}
    if mode == "async":
        values = asyncio.run(pipeline.arun_to_end(graph, config, durability=durability))
    else:
        values = pipeline.run_to_end(graph, config, durability=durability)
    Path(os.environ["LG_EFFECTS"] + ".state").write_text(json.dumps(pipeline.plain_state(values)))
    ledger.close()


def forked(fn: Any, *args: Any, crash: tuple[str, int] | None = None) -> int:
    """Run fn in a forked process; return its wait status as a return code (-9: SIGKILL)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _faults._target = crash
            _faults._counts.clear()
            fn(*args)
        except BaseException as e:
            print(f"child error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def case(url: str, prefix: str, outdir: Path, mode: str, durability: str,
         crash: tuple[str, int] | None) -> dict[str, Any]:
    name = f"{mode}-{durability}-{crash[0]}-{crash[1]}" if crash else f"{mode}-{durability}-base"
    effects = outdir / f"{name}.effects"
    os.environ["LG_EFFECTS"] = str(effects)
    first = forked(run_once, url, prefix, name, mode, durability, crash=crash)
    # What Redis holds as completed once the killed process is gone must never run again.
    kept = completed_keys(url, prefix, name) if crash else []
    at_kill = effects.read_text().splitlines() if effects.exists() else []
    second = forked(run_once, url, prefix, name, mode, durability) if crash else None
    state_file = Path(str(effects) + ".state")
    ledger = Ledger.from_url(url, prefix=prefix)
    steps = ledger.steps(name)
    ledger.close()
    return {
        "case": name, "crash": list(crash) if crash else None, "first": first, "second": second,
        "effects": effects.read_text().splitlines() if effects.exists() else [],
        "state": json.loads(state_file.read_text()) if state_file.exists() else None,
        "steps": [[s.key, str(s.status), s.attempts, str(s.kind)] for s in steps],
        "kept_completed": kept, "effects_at_kill": at_kill,
    }


def completed_keys(url: str, prefix: str, run_id: str) -> list[str]:
    """The idempotency keys of the run's steps that Redis holds as completed."""
    ledger = Ledger.from_url(url, prefix=prefix)
    try:
        return [s.ik for s in ledger.steps(run_id) if str(s.status) == "completed"]
    finally:
        ledger.close()


def main() -> None:
    url, prefix, outdir, mode, durability = sys.argv[1:6]
    out = Path(outdir)
    base = case(url, prefix, out, mode, durability, None)
    print(json.dumps(base), flush=True)
    intents = sum(1 for s in base["steps"] if s[3] != str(StepKind.LLM))
    counts = {"before_claim": intents, "after_claim": intents,
              "before_record": len(base["steps"]), "after_record": len(base["steps"])}
    only = os.environ.get("LG_MATRIX_POINTS")
    for point, n in counts.items():
        if only and point not in only.split(","):
            continue
        for i in range(1, n + 1):
            print(json.dumps(case(url, prefix, out, mode, durability, (point, i))), flush=True)


if __name__ == "__main__":
    main()
