"""Kill a CrewAI crew in the middle of its writer's work, restart it, and send each email once.

    python examples/crewai_crash_resume.py

A researcher -> writer -> editor crew; the writer emails the team, then the press. The first
process is killed with SIGKILL after the team email went out, while the writer asks its LLM
what to do next. The second process kicks off the same crew with the same run id: the
researcher's task and the team email are replayed from the ledger, and the crew carries on
from the call that was in flight. CrewAI's own checkpoint resume re-runs the interrupted task
from its start, which would email the team a second time.

No API key and no Redis to install: the LLM is scripted (it decides from the conversation it
is given, like a real model), and the ledger starts its embedded Redis in ./.agentledger/
(set AGENTLEDGER_URL to use another Redis). Needs ``pip install agentledger[crewai]``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

for _switch, _value in (("CREWAI_DISABLE_TELEMETRY", "true"), ("OTEL_SDK_DISABLED", "true"),
                        ("CREWAI_TRACING_ENABLED", "false")):
    os.environ.setdefault(_switch, _value)  # offline: CrewAI would otherwise phone home

HERE = Path(".agentledger")
OUTBOX = HERE / "crewai-outbox.jsonl"  # the "mail server": one line per accepted email
CRASHED = HERE / "crewai-crashed"  # the first process writes this just before it dies


def send(to: str, subject: str) -> str:
    import agentledger

    with OUTBOX.open("a") as f:
        f.write(json.dumps({"to": to, "subject": subject,
                            "key": agentledger.current_idempotency_key()}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return f"email to {to} accepted"


def build_crew() -> Any:
    from crewai import Agent, Crew, Task
    from crewai.llms.base_llm import BaseLLM
    from crewai.tools import tool

    @tool("send_email")
    def send_email(to: str, subject: str) -> str:
        """Send an email."""
        return send(to, subject)

    @tool("search")
    def search(query: str) -> str:
        """Search the launch notes."""
        return "Launch date: 1 June. Price: 9 EUR."

    plans = {"researcher": [("search", {"query": "launch"})],
             "writer": [("send_email", {"to": "team@example.com", "subject": "We launch 1 June"}),
                        ("send_email", {"to": "press@example.com", "subject": "Launch on 1 June"})],
             "editor": []}

    class ScriptedLLM(BaseLLM):
        """Chooses from the conversation it is given: which agent, how many tool results."""

        def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
                 available_functions: Any = None, from_task: Any = None,
                 from_agent: Any = None, response_model: Any = None) -> str:
            role = next(r for r in plans if f"You are {r}" in str(messages[0]["content"]))
            seen = sum("Observation:" in str(m.get("content", "")) for m in messages[1:])
            if role == "writer" and seen == 1 and not CRASHED.exists():
                CRASHED.write_text("killed mid-writer")
                print(f"  [pid {os.getpid()}] killed mid-writer (SIGKILL)", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if seen < len(plans[role]):
                name, args = plans[role][seen]
                return f"Thought: next\nAction: {name}\nAction Input: {json.dumps(args)}"
            return f"Thought: done\nFinal Answer: {role} finished after {seen} tool calls"

    def agent(role: str, tools: list[Any]) -> Agent:
        return Agent(role=role, goal=f"do the {role}'s part", backstory="careful",
                     llm=ScriptedLLM(model="scripted"), tools=tools, allow_delegation=False)

    researcher, writer, editor = (agent("researcher", [search]),
                                  agent("writer", [send_email]), agent("editor", []))
    return Crew(agents=[researcher, writer, editor], tasks=[
        Task(description="Find the launch facts", expected_output="facts", agent=researcher),
        Task(description="Email the team, then the press", expected_output="sent",
             agent=writer),
        Task(description="Edit the announcement", expected_output="final text", agent=editor),
    ])


def child(run_id: str) -> None:
    from agentledger import Ledger
    from agentledger.crewai import DurableCrewHandler

    ledger = Ledger.from_url()
    crew = build_crew()
    handler = DurableCrewHandler(run_id, ledger=ledger).attach(crew)
    out = crew.kickoff()
    session = handler.last_session
    assert session is not None
    print(f"  [pid {os.getpid()}] finished: {out.raw!r}")
    print(f"  [pid {os.getpid()}] steps executed here: {session.executed}, "
          f"replayed from the ledger: {session.replayed}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    HERE.mkdir(exist_ok=True)
    for path in (OUTBOX, CRASHED):
        path.unlink(missing_ok=True)
    run_id = f"launch-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, __file__, "--child", run_id]
    print(f"run {run_id}: first process")
    first = subprocess.run(cmd)
    print(f"  exit status {first.returncode} (-9 is SIGKILL)")
    from agentledger import Ledger

    ledger = Ledger.from_url()
    recorded = {s.key for s in ledger.steps(run_id) if s.status == "completed"}
    print(f"run {run_id}: second process, same run id")
    second = subprocess.run(cmd)
    if second.returncode != 0:
        sys.exit(f"the resumed run failed (exit {second.returncode})")

    print("\nsteps of the run:")
    for s in ledger.steps(run_id):
        where = ("recorded by the first process, not run again" if s.key in recorded
                 else "executed by the second process")
        print(f"  {s.key:<48} {where}")
    emails = [json.loads(line) for line in OUTBOX.read_text().splitlines()]
    print("\nthe mail server received:")
    for e in emails:
        print(f"  to {e['to']:<20} {e['subject']!r:<22} idempotency key {e['key']}")
    counts: dict[str, int] = {}
    for e in emails:
        counts[e["to"]] = counts.get(e["to"], 0) + 1
    ok = counts == {"team@example.com": 1, "press@example.com": 1}
    print("\neach email sent once" if ok else f"\nDUPLICATES: {counts}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
