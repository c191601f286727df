"""Extra cost of recording the calls made inside LangGraph nodes.

    python benchmarks/bench_langgraph_calls.py [REDIS_URL]

One node makes N calls (chat-model calls, or tool calls) on a graph compiled with
DurableCheckpointer. The same graph runs with the call recording installed and uninstalled
(the checkpointer saves the same checkpoints either way), alternating with a third variant
that makes one raw SET next to each unrecorded call (the cost of a round trip made between
LangChain's work, which is more than a SET timed back to back), each invocation on a fresh
thread (so every call is live, nothing replays). The node times each call on its own;
the extra cost of recording one call is the difference of the medians of those timings, so
the per-invocation cost of opening and finishing the run stays out of it (it is measured on
its own). Every figure is also a ratio to a raw
redis-py SET round trip measured in the same run. Prints a markdown section.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any, TypedDict

import redis
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph

from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer, _recording

N_CALLS = 20
ROUNDS = 40
DURABILITY = os.environ.get("BENCH_DURABILITY", "async")
# The recorded variant runs at each level in the same rounds (the graph's durability= is its
# run's level): one table row per level.
LEVELS = ("sync", "async", "exit")


class EchoChat(BaseChatModel):
    """A model that answers at once: what is measured is the recording, not the model."""

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        text = f"echo {messages[-1].content}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


@tool
def add_one(x: int) -> int:
    """Add one."""
    return x + 1


class State(TypedDict):
    n: int


def build(saver: DurableCheckpointer, kind: str, calls: int, timings: list[float],
          before: Any = None) -> Any:
    """The graph; ``before()``, if given, runs inside each call's timing, before the call."""
    model = EchoChat()

    def node(state: State) -> dict[str, Any]:
        for i in range(calls):
            t0 = time.perf_counter()
            if before is not None:
                before()
            if kind == "llm":
                model.invoke(f"question {i}")
            else:
                add_one.invoke({"x": i})
            timings.append(time.perf_counter() - t0)
        return {"n": calls}

    g = StateGraph(State)
    g.add_node("work", node)
    g.add_edge(START, "work")
    return g.compile(checkpointer=saver)


SET_SAMPLES: list[float] = []


def sample_set(client: redis.Redis, n: int) -> None:
    """Raw SET round trips, taken between the graph rounds so that they see the same load."""
    key = "bench-lg-calls:set"
    for _ in range(n):
        t0 = time.perf_counter()
        client.set(key, "x")
        SET_SAMPLES.append(time.perf_counter() - t0)


def invoke_us(graph: Any, thread: str, durability: str = DURABILITY) -> float:
    t0 = time.perf_counter()
    graph.invoke({"n": 0}, {"configurable": {"thread_id": thread}}, durability=durability)
    return (time.perf_counter() - t0) * 1e6


def measure(saver: DurableCheckpointer, client: redis.Redis, kind: str) -> dict[str, float]:
    """Three variants, alternating: plain, recorded, and plain with one raw SET made next to
    each call (what one round trip costs when it is interleaved with LangChain's work)."""
    calls: dict[str, list[float]] = {"plain": [], "recorded": [], "set": [],
                                     **{f"recorded-{level}": [] for level in LEVELS}}
    for i in range(ROUNDS + 3):
        for variant in calls:
            recorded = variant.startswith("recorded")
            (_recording.install if recorded else _recording.uninstall)()
            timings: list[float] = []
            before = (lambda: client.set("bench-lg-calls:set", "x")) if variant == "set" else None
            graph = build(saver, kind, N_CALLS, timings, before)
            level = variant.split("-", 1)[1] if "-" in variant else DURABILITY
            invoke_us(graph, f"bench-{kind}-{variant}-{i}-{uuid.uuid4().hex[:6]}", level)
            if i >= 3:  # warm-up rounds
                calls[variant].extend(timings)
        sample_set(client, 50)
    _recording.install()
    med = {v: statistics.median(t) * 1e6 for v, t in calls.items()}
    return {"per_call": med["recorded"] - med["plain"], "plain_call": med["plain"],
            "set_in_node": med["set"] - med["plain"],
            **{level: med[f"recorded-{level}"] - med["plain"] for level in LEVELS}}


def chain(saver: DurableCheckpointer, nodes: int, stamps: list[float]) -> Any:
    """``nodes`` tasks in a row that make no call; each notes when it starts."""
    def node(state: State) -> dict[str, Any]:
        stamps.append(time.perf_counter())
        return {"n": state["n"] + 1}

    g = StateGraph(State)
    prev = START
    for i in range(nodes):
        g.add_node(f"t{i}", node)
        g.add_edge(prev, f"t{i}")
        prev = f"t{i}"
    return g.compile(checkpointer=saver)


def task_overhead_us(saver: DurableCheckpointer, nodes: int = 21) -> dict[str, float]:
    """What recording adds to each task (node run) that makes no call: the time from one
    task's start to the next one's (LangGraph's step, the checkpoint, the task wrapper),
    recorded minus plain, medians of every gap. The checkpointer is the same in both
    variants, and the run's opening and finishing fall outside the gaps."""
    gaps: dict[str, list[float]] = {"plain": [], "recorded": []}
    for i in range(ROUNDS + 3):
        for variant in gaps:
            (_recording.install if variant == "recorded" else _recording.uninstall)()
            stamps: list[float] = []
            invoke_us(chain(saver, nodes, stamps),
                      f"bench-tasks-{variant}-{i}-{uuid.uuid4().hex[:6]}")
            if i >= 3:
                gaps[variant] += [b - a for a, b in itertools.pairwise(stamps)]
    _recording.install()
    med = {v: statistics.median(g) * 1e6 for v, g in gaps.items()}
    return {"per_task": med["recorded"] - med["plain"], "plain_task": med["plain"]}


def protocol_us(ledger: Ledger, intent: bool, n: int = 1000) -> float:
    """The step protocol alone (begin + record, no graph, no LangChain): median µs per step."""
    from langchain_core.messages import AIMessage

    from agentledger import StepCall

    session = ledger.open_run(f"bench-protocol-{uuid.uuid4().hex[:8]}")
    value = AIMessage(content="echo question", id="run-1")
    samples = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            start = session.begin(StepCall(kind="tool" if intent else "llm", name="x",
                                           inputs={"messages": [{"type": "human",
                                                                 "content": f"q{i}"}]},
                                           scope="work.1", call_id=str(i), intent=intent))
            session.record(start, value)
            samples.append(time.perf_counter() - t0)
    finally:
        session.finish("completed")
    return statistics.median(samples) * 1e6


def open_finish_us(ledger: Ledger, n: int = 300) -> float:
    """What a graph invocation adds around its calls: open the run, finish it."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        session = ledger.open_run(f"bench-open-{uuid.uuid4().hex[:8]}", kind="langgraph")
        session.finish("completed")
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "AGENTLEDGER_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-lgcalls-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    ledger = Ledger.from_url(url, prefix=prefix)
    saver = DurableCheckpointer(ledger)
    try:
        sample_set(client, 200)
        SET_SAMPLES.clear()  # warm-up
        llm = measure(saver, client, "llm")
        tools = measure(saver, client, "tool")
        tasks = task_overhead_us(saver)
        proto_llm, proto_tool = protocol_us(ledger, False), protocol_us(ledger, True)
        run_us = open_finish_us(ledger)
        sample_set(client, 1000)
        client.delete("bench-lg-calls:set")
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        ledger.close()
        client.close()
    set_ref = statistics.median(SET_SAMPLES) * 1e6

    def row(name: str, us: float, target: str) -> str:
        return f"| {name} | {us:.0f} | {us / set_ref:.2f} | {target} |"

    print("## LangGraph recorded calls\n")
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Redis at {url.split('@')[-1]}, durability={DURABILITY!r}; {N_CALLS} calls per node x {ROUNDS} invocations "
          "per variant, plain, recorded and plain with a raw SET alternating, every call live "
          "(fresh thread each time); medians of the per-call timings.\n")
    print(f"Raw redis-py SET round trip (same run, sampled between the rounds): {set_ref:.0f} µs "
          f"(median of {len(SET_SAMPLES)}).\n")
    print("| extra cost of recording | µs | × SET | target |")
    print("|---|---:|---:|---|")
    print(row("per chat-model call (outcome only, `intent=False`)", llm["per_call"], "≤ 2.5"))
    print(row("per tool call (intent + outcome)", tools["per_call"], "≤ 2.5"))
    print(row("for reference: one raw SET made in the node next to each unrecorded call",
              llm["set_in_node"], "—"))
    print(row("the same, next to each unrecorded tool call", tools["set_in_node"], "—"))
    print(row("per task (node run) that makes no call: the task wrapper", tasks["per_task"],
              "—"))
    print(row("per graph invocation: open + finish the run (measured alone)", run_us, "—"))
    print(row("the step protocol alone, no graph: one LLM step (begin + record)", proto_llm,
              "—"))
    print(row("the step protocol alone, no graph: one tool step (claim + record)", proto_tool,
              "—"))
    print()
    print("By durability level (the graph invoked with `durability=`, the levels taking turns "
          "in the same rounds as the variants above):\n")
    print("| level | per chat-model call, µs | × SET | × a SET in the node | "
          "per tool call, µs | × SET | × a SET in the node |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for level in LEVELS:
        print(f"| `{level}` | {llm[level]:.0f} | {llm[level] / set_ref:.2f} | "
              f"{llm[level] / llm['set_in_node']:.2f} | {tools[level]:.0f} | "
              f"{tools[level] / set_ref:.2f} | {tools[level] / tools['set_in_node']:.2f} |")
    print()
    print(f"For scale, without recording one fake-model call costs {llm['plain_call']:.0f} µs "
          f"and one tool call {tools['plain_call']:.0f} µs (LangChain's own overhead), and one "
          f"task of a {DURABILITY!r} graph {tasks['plain_task']:.0f} µs (LangGraph and the "
          "checkpointer).")


if __name__ == "__main__":
    main()
