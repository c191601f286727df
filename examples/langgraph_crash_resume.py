"""Crash a LangGraph pipeline in the middle of sending emails, restart it, and see every email
sent exactly once.

    python examples/langgraph_crash_resume.py

A researcher -> writer -> editor graph runs on ``DurableCheckpointer.from_url()`` (no URL: an
embedded Redis in ./.agentledger/). The writer sends three notification emails through a tool
that appends them to ./.agentledger/outbox.txt. This script starts the pipeline in a child
process, which is killed (SIGKILL) while sending the third email, then starts it again with the
same thread id: the model calls and the first two emails come back from their records, the third
email (whose attempt started but never finished) is sent, and the editor runs.

The models are scripted (a BaseChatModel that answers from what it is asked), so the demo
needs no API key.
"""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph

import agentledger
from agentledger.langgraph import DurableCheckpointer, thread_progress

THREAD = "demo-launch"
# Next to the embedded Redis's data, so that the demo leaves nothing else behind.
OUTBOX = Path(os.environ.get("AGENTLEDGER_HOME") or ".agentledger") / "outbox.txt"
RECIPIENTS = ["ann@example.com", "bob@example.com", "carol@example.com"]


# ---- the pipeline -----------------------------------------------------------------------
class ScriptedModel(BaseChatModel):
    """A stand-in for a real chat model: its answer depends only on what it is asked."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        role, task = str(messages[0].content), str(messages[-1].content)
        if "researcher" in role:
            text = f"Findings on {task}: ships Friday, 3 new features, no breaking changes."
        elif "writer" in role:
            text = f"Launch notes. {task.split(': ', 1)[-1]}"
        else:
            text = f"Edited: {task}"
        print(f"    model answered the {role.split()[-1].rstrip('.')}", flush=True)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


@tool
def send_email(to: str, body: str) -> str:
    """Send a notification email (here: append it to the outbox file)."""
    if os.environ.get("DEMO_CRASH") and to == RECIPIENTS[2]:
        print(f"    ** process {os.getpid()} is killed while sending to {to} **", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    # A real mail API would take this key and drop a second request carrying it.
    key = agentledger.current_idempotency_key()
    with OUTBOX.open("a") as f:
        f.write(f"to={to}  key={key}  body={body[:40]}\n")
    print(f"    sent email to {to}", flush=True)
    return f"sent to {to}"


class State(TypedDict):
    topic: str
    findings: str
    draft: str
    final: str
    sent: Annotated[list[str], operator.add]


model = ScriptedModel()


def ask(role: str, text: str) -> str:
    return str(model.invoke([SystemMessage(f"You are the {role}."), HumanMessage(text)]).content)


def researcher(state: State) -> dict[str, Any]:
    return {"findings": ask("researcher", state["topic"])}


def writer(state: State) -> dict[str, Any]:
    draft = ask("writer", state["findings"])
    sent = [send_email.invoke({"to": to, "body": draft}) for to in RECIPIENTS]
    return {"draft": draft, "sent": sent}


def editor(state: State) -> dict[str, Any]:
    return {"final": ask("editor", state["draft"])}


def build(checkpointer: DurableCheckpointer) -> Any:
    g = StateGraph(State)
    g.add_node("researcher", researcher)
    g.add_node("writer", writer)
    g.add_node("editor", editor)
    g.add_edge(START, "researcher")
    g.add_edge("researcher", "writer")
    g.add_edge("writer", "editor")
    g.add_edge("editor", END)
    return g.compile(checkpointer=checkpointer)


def run_pipeline() -> None:
    """One process's go at the thread: start it, or resume it where the last process stopped."""
    graph = build(DurableCheckpointer.from_url())
    config = {"configurable": {"thread_id": THREAD}}
    # "new": nothing saved yet, send the input; otherwise continue where it stopped.
    fresh = thread_progress(graph, config).status == "new"
    result = graph.invoke({"topic": "the v2 launch", "sent": []} if fresh else None, config)
    print(f"    editor: {result['final']}", flush=True)


# ---- the demo -------------------------------------------------------------------------------
def start_process(n: int, crash: bool) -> int:
    print(f"\nprocess {n}: {'start the pipeline' if n == 1 else 'start it again, same thread id'}")
    env = {**os.environ, "DEMO_CRASH": "1" if crash else ""}
    return subprocess.run([sys.executable, __file__, "--child"], env=env).returncode


def main() -> None:
    saver = DurableCheckpointer.from_url()  # the embedded Redis in ./.agentledger
    saver.delete_thread(THREAD)  # a clean demo thread: its checkpoints and step records
    OUTBOX.parent.mkdir(parents=True, exist_ok=True)
    OUTBOX.unlink(missing_ok=True)
    print(f"thread {THREAD!r}: researcher -> writer (3 emails) -> editor")

    code = start_process(1, crash=True)
    print(f"    process 1 ended: {'killed by SIGKILL' if code == -signal.SIGKILL else code}")
    code = start_process(2, crash=False)
    print(f"    process 2 ended: {'completed' if code == 0 else code}")

    print("\nevery call, from its step record in Redis (process 2 ran the writer node again"
          " from its start;\nits model call and first two emails came back from their records):")
    steps = saver.ledger.steps(THREAD)
    # Each process holds the run under a fencing token of its own, and tokens only grow:
    # process 1's is the smallest.
    first = min(step.fence for step in steps)
    for step in steps:
        if step.fence == first and step.attempts == 1:
            story = "done by process 1, not run again"
        elif step.attempts > 1:
            story = (f"process 1 died inside it: run again by process 2 "
                     f"(attempt {step.attempts}, same idempotency key)")
        else:
            story = "done by process 2"
        print(f"    {step.key:<34} {story}")

    print(f"\n{OUTBOX}: each email once")
    for line in OUTBOX.read_text().splitlines():
        print(f"    {line}")
    saver.close()


if __name__ == "__main__":
    if "--child" in sys.argv:
        run_pipeline()
    else:
        main()
