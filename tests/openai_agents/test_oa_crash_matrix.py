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
from _support import killed

CHILD = Path(__file__).parent / "children" / "oa_child.py"
POINTS = ["before_claim", "after_claim", "before_record", "after_record", "in_tool"]
FLOWS = ["seq", "parallel", "agent_tool", "handoff", "stream"]
MAX_CHILDREN = 40

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
                 prefix: str, tmp: Path) -> None:
        self.servers = children
        self.flow = flow
        self.point = point
        self.run_id = f"oa-{flow}-{point}-{uuid.uuid4().hex[:6]}"
        self.url = redis_url
        self.prefix = prefix
        self.effects = tmp / "effects.txt"
        self.kills = 0
        self.children = 0

    def env(self, first: bool) -> dict[str, str]:
        env = {"AL_EFFECTS": str(self.effects)}
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
        env = self.env(first) if crash else {"AL_EFFECTS": str(self.effects)}
        return self.servers.run(CHILD, scenario, self.run_id, self.url, self.prefix, mode,
                                env=env)

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
        for tool, n in expected.items():
            if tool != "on_handoff":
                # One idempotency key per call: no call was made a second time by asking
                # the model again; repeats are re-runs of an in-doubt step with its own key.
                assert len(keys[tool]) == n, (tool, keys[tool])
            in_doubt_possible = self.point in ("before_record", "in_tool") or (
                self.flow == "parallel" and self.kills > 0)
            if in_doubt_possible:
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


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("flow", FLOWS)
def test_killed_at_each_boundary_then_restarted(children: ForkServers, flow: str, point: str,
                                                redis_url: str, prefix: str,
                                                tmp_path: Path) -> None:
    """For n = 1, 2, ...: a fresh run killed the n-th time it reaches ``point``, then
    restarted once with the same run id; until a run no longer reaches its n-th boundary."""
    mode = "stream" if flow == "stream" else "run"
    n = 1
    while n <= MAX_CHILDREN:
        d = tmp_path / f"n{n}"
        d.mkdir()
        chain = Chain(children, flow, point, redis_url, prefix, d)
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
