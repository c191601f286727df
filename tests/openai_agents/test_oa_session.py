"""The SDK session (conversation memory) of a durable run is read and rewound by the SDK's
rules: the run's context for context-aware sessions, bounded reads, the run's tracing
settings, and a clear error where a rewritten history cannot be rewound."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "children"))

from agents import (
    RunConfig,
    RunContextWrapper,
    Runner,
    SessionSettings,
    SQLiteSession,
    custom_span,
    set_trace_processors,
    set_tracing_disabled,
    trace,
)
from agents.tracing import TracingProcessor
from oa_session_child import TenantSession, turn_agent

from _support import killed, run_child
from agentledger import Ledger, LedgerError
from agentledger.openai_agents import DurableRunner

CHILD = Path(__file__).parent / "children" / "oa_session_child.py"


def child_out(proc: Any) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return dict(json.loads(line[len("RESULT "):]))


async def test_a_context_aware_session_rewinds_the_runs_own_scope_after_a_kill(
        redis_url: str, prefix: str, ledger: Ledger, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "tenants.db")
    monkeypatch.setenv("AL_EFFECTS", str(tmp_path / "reference.effects"))
    tenants = TenantSession(db)
    reference = []
    for n in (1, 2):  # two clean turns of another tenant, in this process
        result = await DurableRunner.run(turn_agent(), f"hello from t-{n}", run_id=f"ref-{n}",
                                         ledger=ledger, session=tenants, context={"tenant": "ref"})
        reference.append(result.final_output)
    # The history a call without the run's context would read and pop.
    await tenants.add_items([{"role": "user", "content": f"other {i}"} for i in range(5)])

    def turn(run_id: str, **env: str) -> Any:
        env.setdefault("AL_EFFECTS", str(tmp_path / f"{run_id}.effects"))
        return run_child(CHILD, run_id, redis_url, prefix, db, "ann", env=env)

    first = child_out(turn("t-1"))
    assert first["final"] == reference[0] == "done: reserved book; charged 30 for order 42"
    assert killed(turn("t-2", AL_KILL_IN_TOOL="charge_card"))  # dies in turn 2
    second = child_out(turn("t-2"))
    expected = await tenants.get_items(wrapper=RunContextWrapper({"tenant": "ref"}))
    assert second["final"] == reference[1]
    assert second["session"] == [i.get("type", i.get("role")) for i in expected]
    assert len(second["session"]) == 12  # two turns: user, (call, output) x2, answer
    assert len(await tenants.get_items()) == 5  # the other history is untouched


class BudgetSession(SQLiteSession):
    """A session with a read budget (as ``EncryptedSession(max_scan_items=...)``): a read of
    more items than the budget fails. Reads the last 20 items for the model, and notes the
    limit of every read."""

    def __init__(self, session_id: str, budget: int) -> None:
        super().__init__(session_id, session_settings=SessionSettings(limit=20))
        self.budget = budget
        self.reads: list[int | None] = []

    async def get_items(self, limit: int | None = None) -> list[Any]:
        self.reads.append(limit)
        items = await super().get_items(limit)
        if (limit is None or limit > self.budget) and len(items) > self.budget:
            raise RuntimeError("read budget exhausted")
        return items


async def fill(session: SQLiteSession, n: int) -> None:
    await session.add_items([{"role": "user", "content": f"old {i}"} for i in range(n)])


async def test_a_bounded_session_with_a_long_history_is_read_from_its_end(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AL_EFFECTS", str(tmp_path / "effects"))
    session = BudgetSession("long", budget=50)
    await fill(session, 200)
    plain = SQLiteSession("plain", session_settings=SessionSettings(limit=20))
    await fill(plain, 200)
    expected = (await Runner.run(turn_agent(), "hi", session=plain)).final_output
    for _ in range(2):  # a fresh start, then a start again that replays
        session.reads.clear()
        result = await DurableRunner.run(turn_agent(), "hi", run_id="long", ledger=ledger,
                                         session=session)
        assert result.final_output == expected
        assert None not in session.reads and max(session.reads) <= 50  # type: ignore[type-var]
    def kinds(items: list[Any]) -> list[Any]:
        return [i.get("type", i.get("role")) for i in items]

    assert kinds(await session.get_items(50)) == kinds(await plain.get_items(50))


async def test_a_history_rewritten_since_the_run_began_is_a_clear_error(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AL_EFFECTS", str(tmp_path / "effects"))
    session = SQLiteSession("compacted")
    await fill(session, 40)
    await DurableRunner.run(turn_agent(), "hi", run_id="cmp", ledger=ledger, session=session)
    # Compaction: the history is replaced by a summary.
    await session.clear_session()
    await session.add_items([{"role": "user", "content": "summary of 46 items"}])
    with pytest.raises(LedgerError, match="compacted or edited"):
        await DurableRunner.run(turn_agent(), "hi", run_id="cmp", ledger=ledger,
                                session=session, run_config=RunConfig())
    assert len(await session.get_items()) == 1  # nothing was popped


class Collector(TracingProcessor):
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


class TracedSession(SQLiteSession):
    """A session whose reads are spans of their own."""

    async def get_items(self, limit: int | None = None) -> list[Any]:
        with custom_span("session read"):
            return await super().get_items(limit)


@pytest.mark.parametrize("durable", [False, True])
async def test_no_span_of_the_session_is_recorded_when_tracing_is_disabled(
        durable: bool, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AL_EFFECTS", str(tmp_path / "effects"))
    collector = Collector()
    set_trace_processors([collector])
    set_tracing_disabled(False)
    try:
        session = TracedSession("traced")
        await fill(session, 3)
        config = RunConfig(tracing_disabled=True)
        with trace("the caller's own workflow"):
            if durable:
                for _ in range(2):
                    await DurableRunner.run(turn_agent(), "hi", run_id="tr", ledger=ledger,
                                            session=session, run_config=config)
            else:
                await Runner.run(turn_agent(), "hi", session=session, run_config=config)
    finally:
        set_tracing_disabled(True)
        set_trace_processors([])
    assert [s.span_data.export().get("name") for s in collector.spans] == []
