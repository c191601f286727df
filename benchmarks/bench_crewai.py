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
def set_round_trip_us(url: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(200):
        client.set("bench-crewai:probe", "x")
    samples = []
    for _ in range(3000):
        t0 = time.perf_counter()
        client.set("bench-crewai:probe", "x")
        samples.append(time.perf_counter() - t0)
    client.delete("bench-crewai:probe")
    client.close()
    return statistics.median(samples) * 1e6


def kickoff_ms(url: str | None, tool_calls: int, prefix: str) -> tuple[float, dict[str, float]]:
    """Median ms per kickoff (without the handler when ``url`` is None), and the time spent
    in the handler's LLM proxy and tool hooks per call (µs)."""
    from agentledger import Ledger
    from agentledger.crewai import DurableCrewHandler
    from agentledger.crewai._llm import DurableLLM

    ledger = Ledger.from_url(url, prefix=prefix) if url else None
    times, llm_extra, tool_extra = [], [], []
    for i in range(REPEATS + 3):
        crew = scripted_crew(tool_calls)
        handler = None
        if ledger is not None:
            handler = DurableCrewHandler(f"bench-{i}", ledger=ledger).attach(crew)
            # Measure inside the real crew: the proxy's time minus the real LLM's, and the
            # two tool hooks.
            tools = handler._tools
            hook_s = [0.0]
            before, after = tools.before, tools.after

            def timed(fn: Any) -> Any:
                def run(ctx: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return fn(ctx)
                    finally:
                        hook_s[0] += time.perf_counter() - t0
                return run

            tools.before, tools.after = timed(before), timed(after)  # type: ignore[method-assign]
        proxy_s = [0.0]
        original_call = DurableLLM.call

        def timed_call(self: Any, *a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original_call(self, *a, **k)
            finally:
                proxy_s[0] += time.perf_counter() - t0

        DurableLLM.call = timed_call  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            crew.kickoff()
            elapsed = time.perf_counter() - t0
        finally:
            DurableLLM.call = original_call  # type: ignore[method-assign]
        if i < 3:
            continue  # warm-up
        times.append(elapsed * 1000)
        if handler is not None:
            inner = crew.agents[0].llm.inner.inner_s
            llm_extra.append((proxy_s[0] - inner) / (tool_calls + 1) * 1e6)
            if tool_calls:
                tool_extra.append(hook_s[0] / tool_calls * 1e6)
            handler.detach()
    if ledger is not None:
        for i in range(REPEATS + 3):
            ledger.delete_run(f"bench-{i}")
        ledger.close()
    split = {"llm_us": statistics.median(llm_extra) if llm_extra else 0.0,
             "tool_us": statistics.median(tool_extra) if tool_extra else 0.0}
    return statistics.median(times), split


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
    set_us = set_round_trip_us(url)
    base_k, _ = kickoff_ms(None, TOOL_CALLS, prefix)
    ours_k, split = kickoff_ms(url, TOOL_CALLS, prefix)
    base_0, _ = kickoff_ms(None, 0, prefix)
    ours_0, split0 = kickoff_ms(url, 0, prefix)
    per_round_us = ((ours_k - base_k) - (ours_0 - base_0)) / TOOL_CALLS * 1000
    fixed_us = (ours_0 - base_0) * 1000
    ck_expected, ck_sent, ck_dups = duplicates("crewai", url)
    al_expected, al_sent, al_dups = duplicates("agentledger", url)

    def rt(us: float) -> str:
        return f"{us / set_us:.2f}"

    print("## CrewAI\n")
    print(f"crewai {crewai.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} "
          f"cores; Redis at `{url.split('@')[-1]}`; one raw redis-py SET round trip = "
          f"{set_us:.0f} µs (median of 3000). Median of {REPEATS} kickoffs each.\n")
    print("| what | µs | in SET round trips |")
    print("|---|---:|---:|")
    print(f"| extra per LLM call (proxy, measured inside the crew) | {split['llm_us']:.0f} | "
          f"{rt(split['llm_us'])} |")
    print(f"| extra per tool call (both hooks, measured inside the crew) | "
          f"{split['tool_us']:.0f} | {rt(split['tool_us'])} |")
    print(f"| extra per tool round (1 LLM call + 1 tool call), end to end | "
          f"{per_round_us:.0f} | {rt(per_round_us)} |")
    print(f"| extra per kickoff, fixed (open + finish the run, 1 task step, 1 LLM call) | "
          f"{fixed_us:.0f} | {rt(fixed_us)} |")
    print(f"\nA kickoff with {TOOL_CALLS} tool calls: {base_k:.2f} ms without the handler, "
          f"{ours_k:.2f} ms with it ({ours_k / base_k:.2f}×). With none: {base_0:.2f} ms "
          f"and {ours_0:.2f} ms ({ours_0 / base_0:.2f}×). Extra per LLM call with no tool in "
          f"the kickoff: {split0['llm_us']:.0f} µs ({rt(split0['llm_us'])} round trips).\n")
    print("Crash mid-writer (SIGKILL after the writer's first email, then a restart), "
          "researcher -> writer -> editor crew, the writer emails 2 people:\n")
    print("| resume with | emails expected | emails sent | duplicates |")
    print("|---|---:|---:|---:|")
    print(f"| CrewAI checkpoint (`Crew(checkpoint=...)`, `kickoff(from_checkpoint=...)`) | "
          f"{ck_expected} | {ck_sent} | {ck_dups} |")
    print(f"| agentledger `DurableCrewHandler`, same run id | {al_expected} | {al_sent} | "
          f"{al_dups} |")


if __name__ == "__main__":
    main()
