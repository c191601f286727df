"""The crash matrix: a real child process SIGKILLed at a step boundary, then started again
with the same run id.

For each flow and each crash point, the n-th boundary of that kind is hit in a fresh run, for
every n the flow reaches. A chain (one run dying again and again, each restart at its next
boundary: for ``after_record`` the first live one, for the other points the second, because
the step killed before its record runs again first) covers repeated crashes; it is used for
sequential flows, where that order is fixed. The finished run must give the clean run's final
output, every tool call must have been made with exactly one idempotency key, and a tool may
run twice only when the kill hit between its effect and its record.

Each child is a fresh process forked from a server that imported the SDK once
(``_forkserver``); a crashed child dies by SIGKILL and its restart is a new process.

Durability levels: every flow and point at ``sync`` and at ``async``; ``exit`` for the
sequential flow at the record points (for the ledger ``exit`` is ``async`` under another name:
the session pipelines at any level but ``sync``, core/_hotpath.py; the agents SDK has no
checkpoints of its own for it to mean more: these show the level is passed through). ``run_streamed`` always records at ``sync``, so the stream flow
runs at ``sync`` only. At ``async``/``exit`` the records sent since the last barrier may be
lost with the killed process and their steps run once more, with the same key
(docs/durability.md); what Redis held as completed after the kill never runs again, at
every level.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _forkserver import ForkServers
from _support import RedisServer, killed

CHILD = Path(__file__).parent / "children" / "oa_child.py"
POINTS = ["before_claim", "after_claim", "before_record", "after_record", "in_tool"]
FLOWS = ["seq", "parallel", "agent_tool", "handoff", "stream"]
MAX_CHILDREN = 40
# (flow, durability level, crash point) of the matrix: see the module's docstring.
MATRIX = [*((f, "sync", p) for f in FLOWS for p in POINTS),
          *((f, "async", p) for f in FLOWS if f != "stream" for p in POINTS),
          *(("seq", "exit", p) for p in ("before_record", "after_record"))]

pytestmark = pytest.mark.slow

EXPECTED_FINAL = {
    "seq": "done: reserved book; charged 30 for order 42",
    "stream": "done: reserved book; charged 30 for order 42",
    "parallel": "done: charged 12 for order 7; mailed ann@example.com; reserved lamp",
    "agent_tool": "done: billing says charged 5 for order 9; mailed bob@example.com",
    "handoff": "billing done: charged 99 for order 42",
    "approval": "done: reserved chair; refunded 70 for order 5",
}
EXPECTED_EFFECTS = {
    "seq": {"reserve": 1, "charge_card": 1},
    "stream": {"reserve": 1, "charge_card": 1},
    "parallel": {"reserve": 1, "charge_card": 1, "send_mail": 1},
    "agent_tool": {"charge_card": 1, "send_mail": 1},
    "handoff": {"on_handoff": 1, "charge_card": 1},
    "approval": {"reserve": 1, "refund": 1},
}
# What a child imports: loaded once in the fork servers.
PRELOAD = ["agents", "openai.types.responses", "redis.asyncio", "agentledger",
           "agentledger.openai_agents", "oa_world"]
KILL_TOOL = {"seq": "charge_card", "stream": "charge_card", "parallel": "charge_card",
             "agent_tool": "charge_card", "handoff": "charge_card", "approval": "refund"}


@pytest.fixture(scope="session")
def children() -> Iterator[ForkServers]:
    # Session-wide: an xdist worker may come back to this module after other tests.
    servers = ForkServers(PRELOAD, paths=[CHILD.parent])
    try:
        yield servers
    finally:
        servers.close()


class Chain:
    """Children of one run, each started with the same run id after the last one died."""

    def __init__(self, children: ForkServers, flow: str, point: str, redis_url: str,
                 prefix: str, tmp: Path, durability: str = "sync") -> None:
        self.servers = children
        self.durability = durability
        self.flow = flow
        self.point = point
        self.run_id = f"oa-{flow}-{point}-{uuid.uuid4().hex[:6]}"
        self.url = redis_url
        self.prefix = prefix
        self.effects = tmp / "effects.txt"
        self.kills = 0
        self.children = 0
        # After each kill: the idempotency keys of the steps Redis held as completed, and
        # how many effect lines each key had then.
        self.kept: list[tuple[set[str], Counter[str]]] = []

    def base_env(self) -> dict[str, str]:
        return {"AL_EFFECTS": str(self.effects), "AL_DURABILITY": self.durability}

    def env(self, first: bool) -> dict[str, str]:
        env = self.base_env()
        if self.point == "in_tool":
            env["AL_KILL_IN_TOOL"] = KILL_TOOL[self.flow]
        else:
            n = 1 if first or self.point == "after_record" else 2
            env["AGENTLEDGER_CRASH_AT"] = f"{self.point}:{n}"
        return env

    def child(self, mode: str, first: bool, crash: bool = True
              ) -> subprocess.CompletedProcess[str]:
        self.children += 1
        scenario = "seq" if self.flow == "stream" else self.flow
        env = self.env(first) if crash else self.base_env()
        proc = self.servers.run(CHILD, scenario, self.run_id, self.url, self.prefix, mode,
                                env=env)
        if killed(proc):
            self.note_kill()
        return proc

    def note_kill(self) -> None:
        from agentledger import Ledger

        ledger = Ledger.from_url(self.url, prefix=self.prefix)
        try:
            kept = {s.ik for s in ledger.steps(self.run_id) if str(s.status) == "completed"}
        finally:
            ledger.close()
        self.kept.append((kept, self.effect_keys()))

    def effect_keys(self) -> Counter[str]:
        text = self.effects.read_text() if self.effects.exists() else ""
        return Counter(line.split(" ", 2)[1] for line in text.splitlines())

    def until_done(self, mode: str) -> dict[str, Any]:
        first = True
        while self.children < MAX_CHILDREN:
            proc = self.child(mode, first)
            if killed(proc):
                self.kills += 1
                first = False
                continue
            return child_out(proc)
        raise AssertionError(f"{self.flow}/{self.point}: still dying after {MAX_CHILDREN} children")

    def check_effects(self) -> None:
        lines = [line.split(" ", 2) for line in self.effects.read_text().splitlines()]
        runs = Counter(tool for tool, _, _ in lines)
        keys: dict[str, set[str]] = {}
        for tool, ik, _ in lines:
            keys.setdefault(tool, set()).add(ik)
        expected = EXPECTED_EFFECTS[self.flow]
        assert set(runs) == set(expected), (runs, expected)
        # What Redis held as completed after a kill never ran again.
        now = self.effect_keys()
        for kept, then in self.kept:
            for ik in kept & set(now):
                assert now[ik] == then[ik], (ik, now[ik], then[ik], self.point)
        for tool, n in expected.items():
            if tool != "on_handoff":
                # One idempotency key per call: no call was made a second time by asking
                # the model again; repeats are re-runs of an in-doubt step with its own key.
                assert len(keys[tool]) == n, (tool, keys[tool])
            in_doubt_possible = self.point in ("before_record", "in_tool") or (
                self.flow == "parallel" and self.kills > 0)
            if self.durability != "sync" and self.kills > 0:
                # Records since the last barrier may be lost with the killed process: a lost
                # step runs once more per kill, with its key (checked above).
                assert n <= runs[tool] <= n + self.kills, (tool, runs)
            elif in_doubt_possible:
                assert n <= runs[tool] <= n + 1, (tool, runs)
            else:
                assert runs[tool] == n, (tool, runs, self.point)


def child_out(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return dict(json.loads(line[len("RESULT "):]))


def check_finished(flow: str, chain: Chain, out: dict[str, Any]) -> None:
    assert out["final"] == EXPECTED_FINAL[flow]
    chain.check_effects()
    if flow == "stream":
        assert out["events"] == ["tool_called", "tool_output", "tool_called", "tool_output",
                                 "message_output_created"]


@pytest.mark.parametrize(("flow", "durability", "point"), MATRIX)
def test_killed_at_each_boundary_then_restarted(children: ForkServers, flow: str, point: str,
                                                durability: str, redis_url: str, prefix: str,
                                                tmp_path: Path) -> None:
    """For n = 1, 2, ...: a fresh run killed the n-th time it reaches ``point``, then
    restarted once with the same run id; until a run no longer reaches its n-th boundary."""
    mode = "stream" if flow == "stream" else "run"
    n = 1
    while n <= MAX_CHILDREN:
        d = tmp_path / f"n{n}"
        d.mkdir()
        chain = Chain(children, flow, point, redis_url, prefix, d, durability)
        env = chain.env(True)
        if point != "in_tool":
            env["AGENTLEDGER_CRASH_AT"] = f"{point}:{n}"
        first = children.run(CHILD, "seq" if flow == "stream" else flow, chain.run_id,
                             redis_url, prefix, mode, env=env)
        if not killed(first):
            assert n > 1 and point != "in_tool", "the crash point was never reached"
            check_finished(flow, chain, child_out(first))
            return
        chain.kills = 1
        chain.note_kill()
        check_finished(flow, chain, child_out(chain.child(mode, first=False, crash=False)))
        # Started once more, the completed run executes nothing and answers the same.
        before = chain.effects.read_text()
        assert child_out(chain.child(mode, first=False, crash=False))["final"] == EXPECTED_FINAL[flow]
        assert chain.effects.read_text() == before
        if point == "in_tool":
            return
        n += 1
    raise AssertionError(f"{flow}/{point}: more than {MAX_CHILDREN} boundaries")


@pytest.mark.parametrize("point", ["after_claim", "before_record", "after_record"])
def test_killed_again_and_again_in_one_run(children: ForkServers, point: str, redis_url: str,
                                           prefix: str, tmp_path: Path) -> None:
    """One run, each restart dying at its next boundary of ``point``, until it completes."""
    chain = Chain(children, "seq", point, redis_url, prefix, tmp_path)
    out = chain.until_done("run")
    assert chain.kills >= 2
    check_finished("seq", chain, out)


@pytest.mark.parametrize("point", POINTS)
def test_crash_everywhere_around_an_approval(children: ForkServers, point: str, redis_url: str,
                                             prefix: str, tmp_path: Path) -> None:
    from agentledger import Ledger

    chain = Chain(children, "approval", point, redis_url, prefix, tmp_path)
    out = chain.until_done("run")
    assert out.get("interruptions") == 1 or "pending" in out, out
    kills_before = chain.kills
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        (waiting,) = ledger.pending_approvals(chain.run_id)
        assert waiting.payload["tool"] == "refund"
        assert "refund" not in chain.effects.read_text()  # nothing ran before the decision
        ledger.decide(chain.run_id, waiting.key, approved=True, by="test")
    finally:
        ledger.close()
    out = chain.until_done("resume")
    assert out["final"] == EXPECTED_FINAL["approval"]
    if point != "in_tool":
        assert chain.kills >= 1
    else:
        assert chain.kills - kills_before == 1  # killed inside the approved tool, once
    chain.check_effects()
    # Resumed again: the approved tool does not run a second time.
    before = chain.effects.read_text()
    proc = children.run(CHILD, "approval", chain.run_id, redis_url, prefix, "resume",
                        env={"AL_EFFECTS": str(chain.effects)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert chain.effects.read_text() == before
    assert os.path.getsize(chain.effects) > 0


def test_sdk_session_memory_is_rewound_after_a_crash(children: ForkServers, redis_url: str,
                                                     prefix: str, tmp_path: Path) -> None:
    """With an SDK session, a crashed attempt's items are taken out again on restart, so the
    model input matches the records and the conversation ends as after a clean run."""
    clean = Chain(children, "seq", "in_tool", redis_url, prefix, tmp_path / "clean")
    (tmp_path / "clean").mkdir()
    env = {"AL_EFFECTS": str(clean.effects), "AL_SESSION_DB": str(tmp_path / "clean.db")}
    reference = child_out(children.run(CHILD, "seq", clean.run_id, redis_url, prefix, "run",
                                       env=env))
    (tmp_path / "crash").mkdir()
    chain = Chain(children, "seq", "in_tool", redis_url, prefix, tmp_path / "crash")
    env = {"AL_EFFECTS": str(chain.effects), "AL_SESSION_DB": str(tmp_path / "crash.db"),
           "AL_KILL_IN_TOOL": "charge_card"}
    assert killed(children.run(CHILD, "seq", chain.run_id, redis_url, prefix, "run", env=env))
    env.pop("AL_KILL_IN_TOOL")
    out = child_out(children.run(CHILD, "seq", chain.run_id, redis_url, prefix, "run", env=env))
    assert out["final"] == reference["final"] == EXPECTED_FINAL["seq"]
    assert out["session"] == reference["session"]
    assert len(reference["session"]) == 6  # user, (call, output) x2, answer
    chain.kills = 1
    chain.check_effects()


class BulkRun:
    """The bulk scenario (eight big tool results) at durability 'async' against a
    redis-server of its own (AOF, appendfsync always), which the run's tool or model pauses
    (CLIENT PAUSE WRITE: what arrives after stays unapplied) or SIGKILLs."""

    def __init__(self, children: ForkServers, tmp: Path) -> None:
        self.children = children
        self.server = RedisServer(tmp / "redis", appendonly=True, appendfsync="always").start()
        self.effects = tmp / "effects.txt"
        self.env = {"AL_EFFECTS": str(self.effects), "AL_DURABILITY": "async"}

    def run(self, **hooks: str) -> subprocess.CompletedProcess[str]:
        assert self.server.proc is not None
        env = {**self.env, "AL_REDIS_URL": self.server.url,
               "AL_REDIS_PID": str(self.server.proc.pid), **hooks}
        return self.children.run(CHILD, "bulk", "bulk-1", self.server.url, "t", "run", env=env)

    def redis_killed_and_restarted(self) -> set[str]:
        """SIGKILL Redis (if the run did not) and start it from its AOF; returns the
        idempotency keys of the steps it kept as completed, checking they are a prefix."""
        from agentledger import Ledger

        self.server.kill()
        self.server.start()
        ledger = Ledger.from_url(self.server.url, prefix="t")
        try:
            records = sorted(ledger.steps("bulk-1"), key=lambda r: r.seq)
        finally:
            ledger.close()
        assert all(r.status == "completed" for r in records[:-1]), records
        return {r.ik for r in records if r.status == "completed"}

    def executions(self) -> Counter[str]:
        """How many times each idempotency key's tool call ran."""
        return Counter(line.split(" ")[1] for line in self.effects.read_text().splitlines())

    def close(self) -> None:
        self.server.stop()


def test_redis_killed_mid_run_at_async_keeps_a_prefix_and_redoes_the_suffix(
        children: ForkServers, tmp_path: Path) -> None:
    """Writes paused inside the 3rd tool call (after its effect), Redis SIGKILLed in the model
    call after it: that tool's outcome was sent but never applied. Restarted from its AOF, the
    run starts again: the steps Redis kept never run again; the lost one runs once more with
    its key (docs/durability.md)."""
    bulk = BulkRun(children, tmp_path)
    try:
        first = bulk.run(AL_PAUSE_REDIS="tool:2", AL_KILL_REDIS="model:3")
        assert first.returncode not in (0, -9), first.stdout + first.stderr
        assert "LedgerUnavailableError" in first.stderr, first.stderr[-3000:]
        kept = bulk.redis_killed_and_restarted()
        before = bulk.executions()
        assert len(before) == 3  # parts 0, 1, 2
        lost = [ik for ik in before if ik not in kept]
        assert len(lost) == 1  # part 2: its outcome arrived after the pause
        out = child_out(bulk.run())
        assert out["final"] == "stored 8 parts"
        after = bulk.executions()
        assert len(after) == 8  # one idempotency key per part
        assert after == {ik: 2 if ik in lost else 1 for ik in after}, (after, kept)
    finally:
        bulk.close()


def test_at_async_a_tool_runs_only_once_the_answer_that_called_it_is_acknowledged(
        children: ForkServers, tmp_path: Path) -> None:
    """Writes paused inside the model call that decides the 3rd tool call: its answer (which
    holds the tool call's id, the step's key) cannot be acknowledged, so the tool must not run.
    If it ran, a Redis crash losing the answer would make the model answer again with new call
    ids and the effect would run again under another idempotency key."""
    bulk = BulkRun(children, tmp_path)
    try:
        first = bulk.run(AL_PAUSE_REDIS="model:2")
        assert first.returncode not in (0, -9), first.stdout + first.stderr
        assert len(bulk.executions()) == 2  # parts 0 and 1; part 2 waited, then failed
        bulk.redis_killed_and_restarted()
        assert child_out(bulk.run())["final"] == "stored 8 parts"
        after = bulk.executions()
        assert len(after) == 8 and set(after.values()) == {1}, after
    finally:
        bulk.close()
