"""Scripted fake LLMs and a researcher -> writer -> editor crew for the CrewAI tests.

The fakes are ``BaseLLM`` subclasses that choose their answer from their INPUT (how many tool
results the conversation holds), never from a cursor: a replay skips calls. Tools append each
side effect to the file named by ``CREW_EFFECTS``; ``CREW_KILL_AFTER_EMAIL=1`` makes the email
tool SIGKILL its own process right after its side effect (a crash mid-writer).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import Agent, Crew, Process, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool
from pydantic import BaseModel

# The actions each role takes before its final answer: (tool, arguments).
PLANS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "researcher": [("lookup", {"topic": "launch"})],
    "writer": [("send_email", {"to": "team@example.com", "subject": "Launch"}),
               ("send_email", {"to": "press@example.com", "subject": "Launch"})],
    "editor": [],
}


PLANNER_ANSWER = {"list_of_plans_per_task": [
    {"task_number": i + 1, "task": f"task {i + 1}", "plan": f"plan {i + 1}"} for i in range(3)]}


def effects_path() -> Path | None:
    p = os.environ.get("CREW_EFFECTS")
    return Path(p) if p else None


def record_effect(line: str) -> None:
    p = effects_path()
    if p is not None:
        with p.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_effects(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@tool("lookup")
def lookup(topic: str) -> str:
    """Look a topic up."""
    record_effect(f"lookup:{topic}")
    return f"facts about {topic}"


@tool("send_email")
def send_email(to: str, subject: str) -> str:
    """Send an email to someone."""
    import agentledger

    record_effect(f"email:{to}:{agentledger.current_idempotency_key()}")
    if os.environ.get("CREW_KILL_AFTER_EMAIL") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return f"email to {to} sent"


class Summary(BaseModel):
    title: str
    words: int


def _maybe_kill(role: str, seen: int) -> None:
    """``CREW_KILL_AT=writer:1``: SIGKILL this process the first time (per marker file) the
    writer is asked for its next step after one tool result: a crash between steps."""
    spec = os.environ.get("CREW_KILL_AT")
    marker = os.environ.get("CREW_KILL_MARKER")
    if not spec or not marker or Path(marker).exists():
        return
    want_role, _, want_seen = spec.partition(":")
    if role == want_role and seen == int(want_seen or "0"):
        Path(marker).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)


def _role(messages: Any) -> str:
    system = str(messages[0].get("content", "")) if isinstance(messages, list) else ""
    for role in ("Crew Manager", "Task Execution Planner", "researcher", "writer", "editor"):
        if f"You are {role}" in system:
            return role
    return "other"


def _results_seen(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages[1:]
               if m.get("role") == "tool" or "Observation:" in str(m.get("content", "")))


def _feedback_seen(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return []
    return [str(m.get("content")) for m in messages[1:]
            if "FEEDBACK" in str(m.get("content", "")) and m.get("role") == "user"]


class ScriptedLLM(BaseLLM):
    """ReAct text (``native=False``) or native tool calls (``native=True``)."""

    native: bool = False
    seen_stops: ClassVar[list[list[str]]] = []  # stop words each live call received

    def supports_function_calling(self) -> bool:
        return self.native

    def supports_stop_words(self) -> bool:
        return True

    def _answer(self, messages: Any, tools: Any, response_model: Any) -> Any:
        ScriptedLLM.seen_stops.append(list(self.stop_sequences))
        record_effect(f"llm:{_role(messages)}")
        _maybe_kill(_role(messages), _results_seen(messages))
        role = _role(messages)
        if response_model is not None:
            if role == "Task Execution Planner":
                return response_model.model_validate(PLANNER_ANSWER)
            return response_model(title="Launch", words=3)
        if role == "Task Execution Planner":
            return f"Thought: planned\nFinal Answer: {json.dumps(PLANNER_ANSWER)}"
        n = _results_seen(messages)
        plan = PLANS.get(role, [])
        if role == "Crew Manager":
            plan = [("delegate_work_to_coworker",
                     {"task": "Write and email the launch note", "context": "launch",
                      "coworker": "writer"})]
        feedback = _feedback_seen(messages)
        if n < len(plan):
            name, args = plan[n]
            if self.native and tools:
                return [{"id": f"call_{role}_{n}", "type": "function",
                         "function": {"name": name, "arguments": json.dumps(args)}}]
            return (f"Thought: step {n}\nAction: {name}\nAction Input: {json.dumps(args)}\n"
                    "Observation: (this line is cut by the stop words)")
        final = f"{role} done after {n} results" + (f" with {len(feedback)} feedback"
                                                      if feedback else "")
        if self.native and tools:
            return final
        return f"Thought: done\nFinal Answer: {final}"

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
             response_model: Any = None) -> Any:
        answer = self._answer(messages, tools, response_model)
        if isinstance(answer, str) and self.stop_sequences:
            for stop in self.stop_sequences:
                answer = answer.split(stop)[0]
        return answer

    async def acall(self, messages: Any, tools: Any = None, callbacks: Any = None,
                    available_functions: Any = None, from_task: Any = None,
                    from_agent: Any = None, response_model: Any = None) -> Any:
        return self.call(messages, tools, callbacks, available_functions, from_task,
                         from_agent, response_model)


def build_crew(*, native: bool = False, hierarchical: bool = False,
               human_input: bool = False, pydantic_output: bool = False) -> Crew:
    """A fresh researcher -> writer -> editor crew (new ids every time, as in a restart)."""

    def llm() -> ScriptedLLM:
        return ScriptedLLM(model="scripted", native=native)

    researcher = Agent(role="researcher", goal="find facts", backstory="curious",
                       llm=llm(), tools=[lookup], allow_delegation=False)
    writer = Agent(role="writer", goal="write and send the launch email", backstory="clear",
                   llm=llm(), tools=[send_email], allow_delegation=False)
    editor = Agent(role="editor", goal="polish", backstory="strict", llm=llm(),
                   allow_delegation=False)
    if hierarchical:
        tasks = [Task(description="Research, write and email the {topic} note",
                      expected_output="a sent note")]
        return Crew(agents=[researcher, writer, editor], tasks=tasks,
                    process=Process.hierarchical, manager_llm=llm())
    tasks = [
        Task(description="Research {topic}", expected_output="facts", agent=researcher),
        Task(description="Write and email the {topic} note", expected_output="a sent note",
             agent=writer),
        Task(description="Edit the {topic} note", expected_output="an edited note",
             agent=editor, human_input=human_input,
             output_pydantic=Summary if pydantic_output else None),
    ]
    return Crew(agents=[researcher, writer, editor], tasks=tasks)
