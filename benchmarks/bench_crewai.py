"""CrewAI adapter benchmark: what the handler adds per LLM call and per tool call, and
duplicate side effects after a crash mid-writer against CrewAI's own checkpoint resume.

    python benchmarks/bench_crewai.py [REDIS_URL]

REDIS_URL defaults to AGENTLEDGER_URL, else the embedded Redis. Every figure is a ratio to a
baseline measured in this run: a raw redis-py SET round trip on the same Redis, or the same
crew without the handler. Prints a markdown section. Bounded: about a minute.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

for _switch, _value in (("CREWAI_DISABLE_TELEMETRY", "true"), ("OTEL_SDK_DISABLED", "true"),
                        ("CREWAI_TRACING_ENABLED", "false")):
    os.environ.setdefault(_switch, _value)

TOOL_CALLS = 8  # tool calls per kickoff in the overhead crew
REPEATS = 25
# When set, each tool call of the plain crew times one raw SET: the round trip as code inside
# a running crew sees it, between CrewAI's own work rather than in a tight loop.
IN_CREW_SET: dict[str, Any] = {"client": None, "samples": []}


def scripted_crew(tool_calls: int, outbox: Path | None = None, kill_marker: Path | None = None,
                  checkpoint: Any = None) -> Any:
    """One agent that calls ``send_email`` ``tool_calls`` times, or the 3-agent launch crew
    (researcher -> writer -> editor) when ``outbox`` is given."""
    from crewai import Agent, Crew, Task
    from crewai.llms.base_llm import BaseLLM
    from crewai.tools import tool

    @tool("send_email")
    def send_email(to: str) -> str:
        """Send an email."""
        client = IN_CREW_SET["client"]
        if client is not None:
            t0 = time.perf_counter()
            client.set("bench-crewai:probe", "x")
            IN_CREW_SET["samples"].append(time.perf_counter() - t0)
        if outbox is not None:
            with outbox.open("a") as f:
                f.write(to + "\n")
        return f"sent to {to}"

    plans = {"worker": [f"user{i}@example.com" for i in range(tool_calls)],
             "researcher": [], "writer": ["team@example.com", "press@example.com"],
             "editor": []}

    class ScriptedLLM(BaseLLM):
        inner_s: float = 0.0

        def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
                 available_functions: Any = None, from_task: Any = None,
                 from_agent: Any = None, response_model: Any = None) -> str:
            t0 = time.perf_counter()
            role = next(r for r in plans if f"You are {r}" in str(messages[0]["content"]))
            seen = sum("Observation:" in str(m.get("content", "")) for m in messages[1:])
            if (kill_marker is not None and role == "writer" and seen == 1
                    and not kill_marker.exists()):
                kill_marker.write_text("killed")
                os.kill(os.getpid(), signal.SIGKILL)
            if seen < len(plans[role]):
                answer = ("Thought: next\nAction: send_email\n"
                          f"Action Input: {json.dumps({'to': plans[role][seen]})}")
            else:
                answer = f"Thought: done\nFinal Answer: {role} done after {seen}"
            self.inner_s += time.perf_counter() - t0
            return answer

    def agent(role: str, tools: list[Any]) -> Agent:
        return Agent(role=role, goal="g", backstory="b", llm=ScriptedLLM(model="scripted"),
                     tools=tools, allow_delegation=False)

    if outbox is None:
        worker = agent("worker", [send_email])
        return Crew(agents=[worker], tasks=[Task(description="email everyone",
                                                 expected_output="sent", agent=worker)])
    agents = [agent("researcher", []), agent("writer", [send_email]), agent("editor", [])]
    tasks = [Task(description=f"{a.role} work", expected_output="done", agent=a)
             for a in agents]
    return Crew(agents=agents, tasks=tasks, checkpoint=checkpoint)


# ---- overhead --------------------------------------------------------------------------
def set_round_trip_us(url: str, n: int = 3000) -> float:
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(50):
        client.set("bench-crewai:probe", "x")
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.set("bench-crewai:probe", "x")
        samples.append(time.perf_counter() - t0)
    client.delete("bench-crewai:probe")
    client.close()
    return statistics.median(samples) * 1e6


class _Timer:
    """Accumulates the time spent in wrapped callables (bench instrumentation only)."""

    def __init__(self) -> None:
        self.s = 0.0

    def wrap(self, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s += time.perf_counter() - t0
        return run


def _noop_hook(ctx: Any) -> None:
    return None


LEVELS = ("sync", "async", "exit")


def kickoff_once(ledger: Any, tool_calls: int, run_id: str, noop_hooks: bool,
                 durability: str = "sync") -> tuple[float, float, float]:
    """One kickoff: plain CrewAI (``ledger`` None; with two do-nothing tool hooks when
    ``noop_hooks``) or with the handler. Returns (kickoff s, proxy s beyond the real LLM,
    s in our tool hooks)."""
    from crewai.hooks.dispatch import InterceptionPoint, register, unregister

    from agentledger.crewai import DurableCrewHandler
    from agentledger.crewai._llm import DurableLLM

    crew = scripted_crew(tool_calls)
    proxy, hooks = _Timer(), _Timer()
    handler = None
    original_call = DurableLLM.call
    if ledger is not None:
        handler = DurableCrewHandler(run_id, ledger=ledger, durability=durability).attach(crew)
        tools = handler._tools
        tools.before = hooks.wrap(tools.before)  # type: ignore[method-assign]
        tools.after = hooks.wrap(tools.after)  # type: ignore[method-assign]
        DurableLLM.call = proxy.wrap(original_call)  # type: ignore[method-assign]
    if noop_hooks:
        register(InterceptionPoint.PRE_TOOL_CALL, _noop_hook)
        register(InterceptionPoint.POST_TOOL_CALL, _noop_hook)
    try:
        t0 = time.perf_counter()
        crew.kickoff()
        elapsed = time.perf_counter() - t0
    finally:
        DurableLLM.call = original_call  # type: ignore[method-assign]
        if noop_hooks:
            unregister(InterceptionPoint.PRE_TOOL_CALL, _noop_hook)
            unregister(InterceptionPoint.POST_TOOL_CALL, _noop_hook)
    if handler is None:
        return elapsed, 0.0, 0.0
    inner = crew.agents[0].llm.inner.inner_s
    handler.detach()
    ledger.delete_run(run_id)
    return elapsed, proxy.s - inner, hooks.s


def measure(url: str, prefix: str) -> dict[str, float]:
    """Medians over interleaved repeats (this machine is shared: interleaving spreads any
    background load evenly over the configurations)."""
    import redis

    from agentledger import Ledger

    ledger = Ledger.from_url(url, prefix=prefix)
    samples: dict[str, list[float]] = {k: [] for k in (
        "plain_k", "hooked_k", "ours_k", "plain_0", "ours_0", "llm_us", "tool_us", "set_us",
        *(f"{k}_{level}" for k in ("ours_k", "ours_0") for level in LEVELS[1:]))}
    probe = redis.Redis.from_url(url)
    try:
        for i in range(REPEATS + 3):
            IN_CREW_SET["client"] = probe if i >= 3 else None
            kickoff_once(None, TOOL_CALLS, "", False)  # the in-crew SET probe
            IN_CREW_SET["client"] = None
            plain_k = kickoff_once(None, TOOL_CALLS, "", False)[0]
            hooked_k = kickoff_once(None, TOOL_CALLS, "", True)[0]
            ours_k, proxy_s, hooks_s = kickoff_once(ledger, TOOL_CALLS, f"b-{i}", False)
            plain_0 = kickoff_once(None, 0, "", False)[0]
            ours_0 = kickoff_once(ledger, 0, f"b0-{i}", False)[0]
            by_level = {level: (kickoff_once(ledger, TOOL_CALLS, f"b-{level}-{i}", False,
                                             level)[0],
                                kickoff_once(ledger, 0, f"b0-{level}-{i}", False, level)[0])
                        for level in LEVELS[1:]}
            set_us = set_round_trip_us(url, 200)
            if i < 3:
                continue  # warm-up
            for level, (k, zero) in by_level.items():
                samples[f"ours_k_{level}"].append(k * 1e3)
                samples[f"ours_0_{level}"].append(zero * 1e3)
            for key, value in (("plain_k", plain_k * 1e3), ("hooked_k", hooked_k * 1e3),
                               ("ours_k", ours_k * 1e3), ("plain_0", plain_0 * 1e3),
                               ("ours_0", ours_0 * 1e3), ("set_us", set_us),
                               ("llm_us", proxy_s / (TOOL_CALLS + 1) * 1e6),
                               ("tool_us", hooks_s / TOOL_CALLS * 1e6)):
                samples[key].append(value)
    finally:
        IN_CREW_SET["client"] = None
        probe.close()
        ledger.close()
    out = {k: statistics.median(v) for k, v in samples.items()}
    out["in_crew_set_us"] = statistics.median(IN_CREW_SET["samples"]) * 1e6
    return out


# ---- crash mid-writer ------------------------------------------------------------------
def crash_child(mode: str, work: str, url: str, run_id: str) -> None:
    """One process of the crash comparison (killed mid-writer the first time)."""
    from crewai.state.checkpoint_config import CheckpointConfig

    w = Path(work)
    outbox, marker, checkpoints = w / "outbox.txt", w / "killed", w / "checkpoints"
    if mode == "crewai":
        config = CheckpointConfig(location=str(checkpoints))
        files = sorted(checkpoints.rglob("*"), key=lambda p: p.stat().st_mtime)
        files = [p for p in files if p.is_file()]
        crew = scripted_crew(0, outbox, marker, checkpoint=config)
        if files:
            crew.kickoff(from_checkpoint=CheckpointConfig(location=str(checkpoints),
                                                          restore_from=str(files[-1])))
        else:
            crew.kickoff()
        return
    from agentledger import Ledger
    from agentledger.crewai import DurableCrewHandler

    crew = scripted_crew(0, outbox, marker)
    DurableCrewHandler(run_id, ledger=Ledger.from_url(url, prefix="bench-crewai")).attach(crew)
    crew.kickoff()


def duplicates(mode: str, url: str) -> tuple[int, int, int]:
    """(emails expected, emails sent, process exit codes sum) for one crash-and-resume."""
    with tempfile.TemporaryDirectory() as work:
        run_id = f"crash-{uuid.uuid4().hex[:8]}"
        codes = []
        for _ in range(2):
            proc = subprocess.run([sys.executable, __file__, "--crash-child", mode, work, url,
                                   run_id], capture_output=True, text=True, timeout=120)
            codes.append(proc.returncode)
            if proc.returncode not in (0, -signal.SIGKILL):
                sys.exit(f"{mode} child failed:\n{proc.stderr[-2000:]}")
        if codes != [-signal.SIGKILL, 0]:
            sys.exit(f"{mode}: expected a crash then a clean resume, got exit codes {codes}")
        sent = (Path(work) / "outbox.txt").read_text().splitlines()
        return 2, len(sent), len(sent) - len(set(sent))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--crash-child":
        crash_child(*sys.argv[2:6])
        return
    url = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AGENTLEDGER_URL")) or None
    if url is None:
        from agentledger._embedded import embedded_url

        url = embedded_url(quiet=True)
    import crewai

    prefix = f"bench-crewai-{uuid.uuid4().hex[:6]}"
    m = measure(url, prefix)
    set_us = m["set_us"]
    base_k, hooked_k, ours_k, base_0, ours_0 = (m["plain_k"], m["hooked_k"], m["ours_k"],
                                                m["plain_0"], m["ours_0"])
    split = m
    per_round_us = ((ours_k - base_k) - (ours_0 - base_0)) / TOOL_CALLS * 1000
    hook_machinery_us = (hooked_k - base_k) / TOOL_CALLS * 1000
    fixed_us = (ours_0 - base_0) * 1000
    ck_expected, ck_sent, ck_dups = duplicates("crewai", url)
    al_expected, al_sent, al_dups = duplicates("agentledger", url)

    in_crew = m["in_crew_set_us"]

    def rt(us: float) -> str:
        return f"{us / set_us:.2f}"

    def rt_in(us: float) -> str:
        return f"{us / in_crew:.2f}"

    print("## CrewAI\n")
    print(f"`python benchmarks/bench_crewai.py`: crewai {crewai.__version__}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cores; Redis at "
          f"`{url.split('@')[-1]}`. One raw redis-py SET round trip = {set_us:.0f} µs "
          f"(median of 200 SETs per repeat); the same SET timed inside a tool of a running crew "
          f"= {in_crew:.0f} µs (one round trip made between CrewAI's own work, not in a tight "
          f"loop). A one-agent crew whose scripted LLM makes {TOOL_CALLS} ReAct tool "
          f"calls; each figure is the median of {REPEATS} interleaved repeats of every "
          "configuration.\n")
    print("| extra cost | µs | raw SET round trips | SET round trips inside the crew |")
    print("|---|---:|---:|---:|")
    print(f"| per LLM call: the proxy beyond the real LLM (1 round trip + fingerprint) | "
          f"{split['llm_us']:.0f} | {rt(split['llm_us'])} | {rt_in(split['llm_us'])} |")
    print(f"| per tool call: our two hooks (2 round trips: intent, outcome) | "
          f"{split['tool_us']:.0f} | {rt(split['tool_us'])} | {rt_in(split['tool_us'])} |")
    print(f"| per tool call: CrewAI's own cost of having any tool hook registered | "
          f"{hook_machinery_us:.0f} | {rt(hook_machinery_us)} | {rt_in(hook_machinery_us)} |")
    print(f"| per LLM call + tool call, end to end (kickoff time slope) | "
          f"{per_round_us:.0f} | {rt(per_round_us)} | {rt_in(per_round_us)} |")
    print(f"| per kickoff, fixed (open + finish the run, a task step, one LLM call) | "
          f"{fixed_us:.0f} | {rt(fixed_us)} | {rt_in(fixed_us)} |")
    print("\nBy durability level (`DurableCrewHandler(..., durability=)`), the same interleaved "
          "repeats: per LLM call + tool call, end to end (kickoff time slope):\n")
    print("| level | µs | raw SET round trips | SET round trips inside the crew |")
    print("|---|---:|---:|---:|")
    for level in LEVELS:
        k, zero = ((ours_k, ours_0) if level == "sync"
                   else (m[f"ours_k_{level}"], m[f"ours_0_{level}"]))
        slope = ((k - base_k) - (zero - base_0)) / TOOL_CALLS * 1000
        print(f"| `{level}` | {slope:.0f} | {rt(slope)} | {rt_in(slope)} |")
    print(f"\nKickoff with {TOOL_CALLS} tool calls: {base_k:.1f} ms plain, {hooked_k:.1f} ms "
          f"with two do-nothing hooks, {ours_k:.1f} ms with the handler "
          f"({ours_k / base_k:.2f}× plain). With no tool call: {base_0:.1f} ms and "
          f"{ours_0:.1f} ms ({ours_0 / base_0:.2f}×).\n")
    print("Crash mid-writer (SIGKILL when the writer asks its LLM for the next step after "
          "its first email), then a restart; researcher -> writer -> editor, the writer "
          "emails 2 people:\n")
    print("| resume with | emails expected | emails sent | duplicates |")
    print("|---|---:|---:|---:|")
    print(f"| CrewAI checkpoint (`Crew(checkpoint=...)`, `kickoff(from_checkpoint=...)`) | "
          f"{ck_expected} | {ck_sent} | {ck_dups} |")
    print(f"| agentledger `DurableCrewHandler`, same run id | {al_expected} | {al_sent} | "
          f"{al_dups} |")


if __name__ == "__main__":
    main()
