"""What DurableRunner adds to an OpenAI Agents SDK run, in raw Redis round trips, and how
that compares with dbos-openai-agents on SQLite and PostgreSQL.

    python benchmarks/bench_openai_agents.py      # in the openai-agents environment

Every figure is a ratio against a baseline measured in the same run: a redis-py SET round
trip, or the same agent under plain ``Runner.run`` with the same scripted model. The DBOS side
runs in its own environment (``.venv-oa-dbos``: dbos and dbos-openai-agents next to
openai-agents 0.24), as a child of this script, with tools marked as DBOS steps so both sides
record the same calls. Prints a markdown section.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-used")

REPO = Path(__file__).resolve().parent.parent
DBOS_PYTHON = REPO / ".venv-oa-dbos" / "bin" / "python"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TURNS = 20  # tool calls per run (each followed by one model call)
RUNS = 25


# ---- the agent (shared by both sides) ----------------------------------------------------
def build_agent(tool_wrapper: Any = None) -> Any:
    """An agent whose scripted model calls ``work`` TURNS times (it counts the tool results
    in its input), then answers. ``tool_wrapper`` marks the tool body (DBOS.step)."""
    from agents import Agent, ModelResponse, Usage, function_tool
    from agents.models.interface import Model
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    def body(i: int) -> str:
        return f"done {i}"

    if tool_wrapper is not None:
        body = tool_wrapper(body)

    async def work(i: int) -> str:
        """Do unit of work i."""
        return body(i)

    tool = function_tool(work)

    class Scripted(Model):
        def __init__(self, turns: int) -> None:
            self.turns = turns
            self.last_input: Any = None

        async def get_response(self, system_instructions: Any, input: Any, *a: Any,
                               **k: Any) -> ModelResponse:
            seen = 0 if isinstance(input, str) else sum(
                1 for i in input if (i.get("type") if isinstance(i, dict) else
                                     getattr(i, "type", None)) == "function_call_output")
            self.last_input = input
            if seen < self.turns:
                out: list[Any] = [ResponseFunctionToolCall(
                    type="function_call", name="work", arguments=json.dumps({"i": seen}),
                    call_id=f"call_{uuid.uuid4().hex[:12]}")]
            else:
                out = [ResponseOutputMessage(
                    type="message", role="assistant", status="completed",
                    id=f"msg_{uuid.uuid4().hex[:8]}",
                    content=[ResponseOutputText(type="output_text", text=f"{seen} done",
                                                annotations=[])])]
            return ModelResponse(output=out, usage=Usage(requests=1), response_id=None)

        def stream_response(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

    def make(turns: int) -> Any:
        return Agent(name="bench", instructions="work", tools=[tool], model=Scripted(turns))

    return make


CPU: dict[str, float] = {}  # median extra CPU seconds of this process, by comparison


async def paired(base: Any, other: Any, runs: int = RUNS, name: str = ""
                 ) -> tuple[float, float, float]:
    """Medians of ``base``, of ``other`` and of their difference, the two run alternately
    so that the load of a shared machine falls on both alike."""
    await base()
    await other()
    a, b, d, cpu = [], [], [], []
    for _ in range(runs):
        c = time.process_time()
        t = time.perf_counter()
        await base()
        t1 = time.perf_counter()
        c1 = time.process_time()
        await other()
        t2 = time.perf_counter()
        c2 = time.process_time()
        a.append(t1 - t)
        b.append(t2 - t1)
        d.append((t2 - t1) - (t1 - t))
        cpu.append((c2 - c1) - (c1 - c))
    if name:
        CPU[name] = statistics.median(cpu)
    return statistics.median(a), statistics.median(b), statistics.median(d)


async def compare(make: Any, durable: Any) -> dict[str, float]:
    """Plain ``Runner.run`` against ``durable(agent, max_turns)``, for a run of TURNS tool
    calls and a run of one model call."""
    from agents import Runner

    many, one = make(TURNS), make(0)
    out: dict[str, float] = {}
    out["plain_many"], out["durable_many"], out["diff_many"] = await paired(
        lambda: Runner.run(many, "go", max_turns=TURNS + 5), lambda: durable(many, TURNS + 5),
        name="many")
    out["plain_one"], out["durable_one"], out["diff_one"] = await paired(
        lambda: Runner.run(one, "go"), lambda: durable(one, 5), name="one")
    out["cpu_turn"] = (CPU["many"] - CPU["one"]) / TURNS
    return out


# ---- agentledger side --------------------------------------------------------------------
def set_round_trip(url: str) -> tuple[float, float]:
    """Median seconds of one redis-py SET: sync, and asyncio."""
    import redis
    import redis.asyncio as aredis

    client = redis.Redis.from_url(url)
    key = f"albench-{uuid.uuid4().hex[:6]}"
    for _ in range(200):
        client.set(key, "x")
    samples = []
    for _ in range(3000):
        t = time.perf_counter()
        client.set(key, "x")
        samples.append(time.perf_counter() - t)
    sync = statistics.median(samples)

    async def asynchronous() -> float:
        ac = aredis.Redis.from_url(url)
        for _ in range(200):
            await ac.set(key, "x")
        s = []
        for _ in range(3000):
            t = time.perf_counter()
            await ac.set(key, "x")
            s.append(time.perf_counter() - t)
        await ac.aclose()
        return statistics.median(s)

    result = asyncio.run(asynchronous())
    client.delete(key)
    client.close()
    return sync, result


async def ledger_costs(url: str) -> dict[str, float]:
    from agents import Runner

    from agentledger import Ledger
    from agentledger.openai_agents import DurableRunner
    from agentledger.openai_agents._model import DurableModel

    prefix = f"albench-oa-{uuid.uuid4().hex[:6]}"
    ledger = Ledger.from_url(url, prefix=prefix)
    make = build_agent()

    async def durable(agent: Any, max_turns: int) -> Any:
        return await DurableRunner.run(agent, "go", run_id=uuid.uuid4().hex, ledger=ledger,
                                       max_turns=max_turns)

    out = await compare(make, durable)
    many = make(TURNS)
    done_id = uuid.uuid4().hex
    await DurableRunner.run(many, "go", run_id=done_id, ledger=ledger, max_turns=TURNS + 5)
    _, out["replay_many"], _ = await paired(
        lambda: Runner.run(many, "go", max_turns=TURNS + 5),
        lambda: DurableRunner.run(many, "go", run_id=done_id, ledger=ledger,
                                  max_turns=TURNS + 5))

    # The same comparison with the step scripts answered in-process: the adapter's and the
    # core's CPU alone; the rest of the extra per turn is the three round trips.
    with no_step_io():
        io_free = await compare(make, durable)
    out["turn_no_io"] = per_turn_extra(io_free)
    out["cpu_turn_no_io"] = io_free["cpu_turn"]

    # Redis commands per run, counted by the server (exact only on a server of our own).
    import redis

    counter = redis.Redis.from_url(url)

    def commands() -> int:
        stats = counter.info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())

    async def count(agent: Any) -> int:
        before = commands()
        await durable(agent, TURNS + 5)
        return commands() - before - 1  # the first INFO counts itself afterwards

    out["cmds_many"] = float(await count(many))
    out["cmds_one"] = float(await count(make(0)))
    scripts_before = int(counter.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    await durable(many, TURNS + 5)
    out["evalsha_many"] = float(int(counter.info("commandstats")["cmdstat_evalsha"]["calls"])
                                - scripts_before)
    counter.close()

    # One model call alone, through the real wrapper inside a run, against the bare model,
    # with the input of the last turn of a run (all its tool calls and results).
    inner = many.model
    wrapped = DurableModel(inner, "bench")
    from agents import ModelSettings
    from agents.models.interface import ModelTracing

    last_input = list(inner.last_input)
    out["model_input_items"] = len(last_input)
    args = ("work", last_input, ModelSettings(), many.tools, None, [], ModelTracing.DISABLED)
    kw = {"previous_response_id": None, "conversation_id": None, "prompt": None}
    n = 400

    async def calls(model: Any) -> float:
        t = time.perf_counter()
        for _ in range(n):
            await model.get_response(*args, **kw)
        return (time.perf_counter() - t) / n

    diffs = []
    async with ledger.arun(uuid.uuid4().hex):
        for _ in range(7):
            diffs.append(await calls(wrapped) - await calls(inner))
    out["model_extra"] = statistics.median(diffs)
    for run in ledger.list_runs(limit=10_000):
        ledger.delete_run(run.run_id)
    await ledger.aclose()
    ledger.close()
    return out


LEVELS = ("sync", "async", "exit")


async def level_costs(url: str, rounds: int = 3) -> dict[str, list[float]]:
    """Extra seconds per turn (one tool call + one model call) at each durability level,
    the levels taking turns in each round so that the machine's load falls on all alike."""
    from agentledger import Ledger
    from agentledger.openai_agents import DurableRunner

    prefix = f"albench-oal-{uuid.uuid4().hex[:6]}"
    ledger = Ledger.from_url(url, prefix=prefix)
    make = build_agent()
    out: dict[str, list[float]] = {level: [] for level in LEVELS}
    for _ in range(rounds):
        for level in LEVELS:
            async def durable(agent: Any, max_turns: int, level: str = level) -> Any:
                return await DurableRunner.run(agent, "go", run_id=uuid.uuid4().hex,
                                               ledger=ledger, max_turns=max_turns,
                                               durability=level)

            out[level].append(per_turn_extra(await compare(make, durable)))
    for run in ledger.list_runs(limit=10_000):
        ledger.delete_run(run.run_id)
    await ledger.aclose()
    ledger.close()
    return out


@contextlib.contextmanager
def no_step_io() -> Any:
    """Answer a run session's step scripts (claim, complete) in-process as a fresh run's Redis
    would, so that a run costs the adapter's and the core's CPU without the round trips. The
    steps are not recorded: for measuring only (fresh run ids, never replayed)."""
    from agentledger import _hotpath

    real = _hotpath.StepConnection.acall

    async def acall(self: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        if name == "claim":  # args: key, fence, meta, mode, policy, request
            return [b"CLAIMED", args[2].encode(), 1]
        if name == "complete":  # args: key, fence, status, outcome, meta
            return [b"OK", (args[4] or "{}").encode()]
        return await real(self, name, keys, args)

    _hotpath.StepConnection.acall = acall  # type: ignore[method-assign]
    try:
        yield
    finally:
        _hotpath.StepConnection.acall = real  # type: ignore[method-assign]


# ---- DBOS side (runs in .venv-oa-dbos) -----------------------------------------------------
async def dbos_costs(backend: str) -> dict[str, float]:
    from dbos import DBOS, SetWorkflowID
    from dbos_openai_agents import DBOSRunner

    tmp = Path(tempfile.mkdtemp(prefix="albench-dbos-"))
    url = f"sqlite:///{tmp / 'dbos.sqlite'}" if backend == "sqlite" else PG_URL
    schema = f"albench_{uuid.uuid4().hex[:6]}"  # a schema of this run's own, dropped after
    DBOS(config={"name": "albench", "system_database_url": url, "dbos_system_schema": schema}
         if backend == "postgres" else {"name": "albench", "system_database_url": url})
    make = build_agent(DBOS.step(name="work"))

    @DBOS.workflow()
    async def run_agent(turns: int) -> str:
        result = await DBOSRunner.run(make(turns), "go", max_turns=TURNS + 5)
        return str(result.final_output)

    DBOS.launch()

    async def one_workflow(agent: Any, max_turns: int) -> Any:
        with SetWorkflowID(uuid.uuid4().hex):
            return await run_agent(agent.model.turns)

    # The plain side runs the same agent with the undecorated tool body.
    out = await compare(build_agent(), one_workflow)
    DBOS.destroy()
    if backend == "postgres":
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return out


# ---- report ------------------------------------------------------------------------------
def dbos_child(backend: str) -> dict[str, float] | str:
    if not DBOS_PYTHON.exists():
        return f"not run: {DBOS_PYTHON} is missing (see docs/benchmarks.md)"
    proc = subprocess.run([str(DBOS_PYTHON), __file__, "--dbos", backend], capture_output=True,
                          text=True, timeout=600, cwd=str(REPO))
    lines = [x for x in proc.stdout.splitlines() if x.startswith("DBOS ")]
    if proc.returncode != 0 or not lines:
        return f"failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    return dict(json.loads(lines[-1][5:]))


def per_turn_extra(m: dict[str, float]) -> float:
    """Extra seconds per turn (one tool call + one model call) over plain Runner.run, with the
    fixed cost of a run (one model call and the run's own records) taken out."""
    return (m["diff_many"] - m["diff_one"]) / TURNS


def private_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    """A redis-server of the benchmark's own on a free port (no other client's commands in
    its queue), else AGENTLEDGER_URL, else the local default."""
    if os.environ.get("AGENTLEDGER_URL"):
        return os.environ["AGENTLEDGER_URL"], None
    import shutil
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        return "redis://127.0.0.1:6379/0", None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.mkdtemp()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    client.close()
    return f"redis://127.0.0.1:{port}/0", proc


def main() -> int:
    url, server = private_redis()
    try:
        return report(url, private=server is not None)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


def report(url: str, private: bool) -> int:
    sync_rt, async_rt = set_round_trip(url)
    ours = asyncio.run(ledger_costs(url))
    turn = per_turn_extra(ours)
    model = ours["model_extra"]
    tool = turn - model
    fixed = ours["diff_one"] - model
    rows = [
        ("redis-py SET round trip, sync / asyncio (the unit)", f"{sync_rt * 1e6:.0f} µs / "
         f"{async_rt * 1e6:.0f} µs", "1.00 / "f"{async_rt / sync_rt:.2f}"),
        ("plain `Runner.run`, per turn (tool call + model call)",
         f"{(ours['plain_many'] - ours['plain_one']) / TURNS * 1e6:.0f} µs",
         f"{(ours['plain_many'] - ours['plain_one']) / TURNS / sync_rt:.1f}"),
        (f"extra per model call (1 record, no intent; {ours['model_input_items']:.0f} input items)",
         f"{model * 1e6:.0f} µs",
         f"{model / sync_rt:.2f}"),
        ("extra per tool call (intent + outcome)", f"{tool * 1e6:.0f} µs", f"{tool / sync_rt:.2f}"),
        ("extra per call, average of the two", f"{turn / 2 * 1e6:.0f} µs",
         f"{turn / 2 / sync_rt:.2f}"),
        ("extra per run (lease, saved-state lookup, finish)", f"{fixed * 1e6:.0f} µs",
         f"{fixed / sync_rt:.1f}"),
    ]
    per_turn_cmds = (ours["cmds_many"] - ours["cmds_one"]) / TURNS
    rows.append(("CPU time added per turn (this process)", f"{ours['cpu_turn'] * 1e6:.0f} µs",
                 f"{ours['cpu_turn'] / sync_rt:.2f}"))
    rows.append(("extra per turn with the step scripts answered in-process (no Redis I/O)",
                 f"{ours['turn_no_io'] * 1e6:.0f} µs", f"{ours['turn_no_io'] / sync_rt:.2f}"))
    rows.append(("CPU time added per turn, no Redis I/O (adapter + core step protocol)",
                 f"{ours['cpu_turn_no_io'] * 1e6:.0f} µs",
                 f"{ours['cpu_turn_no_io'] / sync_rt:.2f}"))
    replay = ours["replay_many"] / ours["plain_many"]
    levels = asyncio.run(level_costs(url))
    level_set_rt = set_round_trip(url)[0]  # the unit again, right after the levels
    print("## OpenAI Agents SDK\n")
    print(f"`python benchmarks/bench_openai_agents.py` on {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; Redis at {url}; "
          f"a scripted model, {TURNS} sequential tool calls per run, median of {RUNS} runs.\n")
    print("| what | time | in sync SET round trips |")
    print("|---|---|---|")
    for what, t, ratio in rows:
        print(f"| {what} | {t} | {ratio} |")
    if private:
        scripts_per_turn = (ours["evalsha_many"] - 3) / TURNS  # acquire, last model call, finish
        print(f"\nCounted by the server: {scripts_per_turn:.2f} script calls (EVALSHA, one round "
              f"trip each) per turn - a tool call's intent and outcome, a model call's outcome - "
              f"so 1.5 round trips per call; {per_turn_cmds:.1f} commands per turn including "
              f"those the scripts run inside Redis.")
    print("\nBy durability level (`DurableRunner.run(..., durability=)`; 3 rounds, the levels "
          "taking turns; extra per recorded call = half the extra per turn of one tool call "
          f"and one model call; unit: a sync SET measured right after, {level_set_rt * 1e6:.0f} "
          "µs):\n")
    print("| level | extra per recorded call, median of rounds | in sync SETs (rounds) |")
    print("|---|---|---|")
    for level in LEVELS:
        per_call = [t / 2 for t in levels[level]]
        ratios = ", ".join(f"{t / level_set_rt:.2f}" for t in per_call)
        print(f"| `{level}` | {statistics.median(per_call) * 1e6:.0f} µs | "
              f"{statistics.median(per_call) / level_set_rt:.2f} ({ratios}) |")
    print(f"\nA completed run started again (all {2 * TURNS + 1} calls replayed from records) "
          f"takes {replay:.2f}× the time of the plain run.\n")
    print("Against dbos-openai-agents 0.3 (DBOS 3.4; model calls are DBOS steps, the tool body "
          "is marked `@DBOS.step`, so both record the same calls):\n")
    print("| backend | DBOS extra per turn | agentledger extra per turn | DBOS / agentledger "
          "| CPU per turn, DBOS / agentledger |")
    print("|---|---|---|---|---|")
    for backend in ("sqlite", "postgres"):
        theirs = dbos_child(backend)
        if isinstance(theirs, str):
            print(f"| {backend} | {theirs} | {turn * 1e6:.0f} µs | - | - |")
            continue
        t2 = per_turn_extra(theirs)
        print(f"| DBOS on {'SQLite' if backend == 'sqlite' else 'PostgreSQL 15'} | "
              f"{t2 * 1e6:.0f} µs | {turn * 1e6:.0f} µs | {t2 / turn:.1f}× | "
              f"{theirs['cpu_turn'] * 1e6:.0f} / {ours['cpu_turn'] * 1e6:.0f} µs |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--dbos":
        print("DBOS " + json.dumps(asyncio.run(dbos_costs(sys.argv[2]))))
    else:
        sys.exit(main())
