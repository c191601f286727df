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
RUNS = 12


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

        async def get_response(self, system_instructions: Any, input: Any, *a: Any,
                               **k: Any) -> ModelResponse:
            seen = 0 if isinstance(input, str) else sum(
                1 for i in input if (i.get("type") if isinstance(i, dict) else
                                     getattr(i, "type", None)) == "function_call_output")
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


async def timed(fn: Any, runs: int = RUNS) -> float:
    """Median seconds of ``await fn()`` over ``runs`` (after one warm-up)."""
    await fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


async def plain_costs(make: Any) -> dict[str, float]:
    from agents import Runner

    many, one = make(TURNS), make(0)
    return {"plain_many": await timed(lambda: Runner.run(many, "go", max_turns=TURNS + 5)),
            "plain_one": await timed(lambda: Runner.run(one, "go"))}


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
    out = await plain_costs(make)
    many, one = make(TURNS), make(0)

    async def durable(agent: Any, kw: dict[str, Any]) -> Any:
        return await DurableRunner.run(agent, "go", run_id=uuid.uuid4().hex, ledger=ledger, **kw)

    out["durable_many"] = await timed(lambda: durable(many, {"max_turns": TURNS + 5}))
    out["durable_one"] = await timed(lambda: durable(one, {}))
    done_id = uuid.uuid4().hex
    await DurableRunner.run(many, "go", run_id=done_id, ledger=ledger, max_turns=TURNS + 5)
    out["replay_many"] = await timed(lambda: DurableRunner.run(
        many, "go", run_id=done_id, ledger=ledger, max_turns=TURNS + 5))

    # One model call alone, through the real wrapper inside a run, against the bare model.
    inner = one.model
    wrapped = DurableModel(inner, "bench")
    from agents import ModelSettings
    from agents.models.interface import ModelTracing

    args = ("work", "go", ModelSettings(), [], None, [], ModelTracing.DISABLED)
    kw = {"previous_response_id": None, "conversation_id": None, "prompt": None}
    n = 400

    async def calls(model: Any) -> float:
        t = time.perf_counter()
        for _ in range(n):
            await model.get_response(*args, **kw)
        return (time.perf_counter() - t) / n

    bare = statistics.median([await calls(inner) for _ in range(5)])
    async with ledger.arun(uuid.uuid4().hex):
        rec = statistics.median([await calls(wrapped) for _ in range(5)])
    out["model_extra"] = rec - bare
    _ = Runner  # plain runs above used it
    for run in ledger.list_runs(limit=10_000):
        ledger.delete_run(run.run_id)
    await ledger.aclose()
    ledger.close()
    return out


# ---- DBOS side (runs in .venv-oa-dbos) -----------------------------------------------------
async def dbos_costs(backend: str) -> dict[str, float]:
    from dbos import DBOS, SetWorkflowID
    from dbos_openai_agents import DBOSRunner

    tmp = Path(tempfile.mkdtemp(prefix="albench-dbos-"))
    url = f"sqlite:///{tmp / 'dbos.sqlite'}" if backend == "sqlite" else PG_URL
    schema = f"albench_{uuid.uuid4().hex[:6]}"  # a schema of this run's own, dropped after
    DBOS(config={"name": "albench", "system_database_url": url, "dbos_system_schema": schema}
         if backend == "postgres" else {"name": "albench", "system_database_url": url})
    make_plain = build_agent()
    make = build_agent(DBOS.step(name="work"))
    out = await plain_costs(make_plain)

    @DBOS.workflow()
    async def run_agent(turns: int) -> str:
        result = await DBOSRunner.run(make(turns), "go", max_turns=TURNS + 5)
        return str(result.final_output)

    DBOS.launch()

    async def one_workflow(turns: int, wid: str | None = None) -> Any:
        with SetWorkflowID(wid or uuid.uuid4().hex):
            return await run_agent(turns)

    out["durable_many"] = await timed(lambda: one_workflow(TURNS))
    out["durable_one"] = await timed(lambda: one_workflow(0))
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
    return ((m["durable_many"] - m["plain_many"]) - (m["durable_one"] - m["plain_one"])) / TURNS


def main() -> int:
    url = os.environ.get("AGENTLEDGER_URL", "redis://127.0.0.1:6379/0")
    sync_rt, async_rt = set_round_trip(url)
    ours = asyncio.run(ledger_costs(url))
    turn = per_turn_extra(ours)
    model = ours["model_extra"]
    tool = turn - model
    fixed = ours["durable_one"] - ours["plain_one"]
    rows = [
        ("redis-py SET round trip, sync / asyncio (the unit)", f"{sync_rt * 1e6:.0f} µs / "
         f"{async_rt * 1e6:.0f} µs", "1.00 / "f"{async_rt / sync_rt:.2f}"),
        ("plain `Runner.run`, per turn (tool call + model call)",
         f"{(ours['plain_many'] - ours['plain_one']) / TURNS * 1e6:.0f} µs",
         f"{(ours['plain_many'] - ours['plain_one']) / TURNS / sync_rt:.1f}"),
        ("extra per model call (1 record, no intent)", f"{model * 1e6:.0f} µs",
         f"{model / sync_rt:.2f}"),
        ("extra per tool call (intent + outcome)", f"{tool * 1e6:.0f} µs", f"{tool / sync_rt:.2f}"),
        ("extra per call, average of the two", f"{turn / 2 * 1e6:.0f} µs",
         f"{turn / 2 / sync_rt:.2f}"),
        ("extra per run (lease, saved-state lookup, finish)", f"{fixed * 1e6:.0f} µs",
         f"{fixed / sync_rt:.1f}"),
    ]
    replay = ours["replay_many"] / ours["plain_many"]
    print("## OpenAI Agents SDK\n")
    print(f"`python benchmarks/bench_openai_agents.py` on {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; Redis at {url}; "
          f"a scripted model, {TURNS} sequential tool calls per run, median of {RUNS} runs.\n")
    print("| what | time | in sync SET round trips |")
    print("|---|---|---|")
    for what, t, ratio in rows:
        print(f"| {what} | {t} | {ratio} |")
    print(f"\nA completed run started again (all {2 * TURNS + 1} calls replayed from records) "
          f"takes {replay:.2f}× the time of the plain run.\n")
    print("Against dbos-openai-agents 0.3 (DBOS 3.4; model calls are DBOS steps, the tool body "
          "is marked `@DBOS.step`, so both record the same calls):\n")
    print("| backend | DBOS extra per turn | agentledger extra per turn | DBOS / agentledger |")
    print("|---|---|---|---|")
    for backend in ("sqlite", "postgres"):
        theirs = dbos_child(backend)
        if isinstance(theirs, str):
            print(f"| {backend} | {theirs} | {turn * 1e6:.0f} µs | - |")
            continue
        t2 = per_turn_extra(theirs)
        print(f"| DBOS on {'SQLite' if backend == 'sqlite' else 'PostgreSQL 15'} | "
              f"{t2 * 1e6:.0f} µs | {turn * 1e6:.0f} µs | {t2 / turn:.1f}× |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--dbos":
        print("DBOS " + json.dumps(asyncio.run(dbos_costs(sys.argv[2]))))
    else:
        sys.exit(main())
