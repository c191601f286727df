"""agentledger.otel with the OpenAI Agents SDK, on the real OpenTelemetry SDK: an agent run
SIGKILLed inside a tool and resumed shows its replayed, re-run and executed calls in one
trace, under the span the user started around ``DurableRunner.run``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from _otel_support import by_name, captured, read_spans, render, trace_ids, traceparent
from agents import set_trace_processors, set_tracing_disabled
from agents.tracing import TracingProcessor

from _support import killed, run_child
from agentledger import Ledger
from agentledger.openai_agents import DurableRunner

sys.path.insert(0, str(Path(__file__).parent / "children"))
from oa_world import agent_for

ATTR = "agentledger.step."
CHILD = """
import asyncio, sys
sys.path.insert(0, "tests/openai_agents/children")
from _otel_support import child_tracing
from oa_world import agent_for
from agentledger import Ledger
from agentledger.openai_agents import DurableRunner

url, prefix, run_id, spans_file = sys.argv[1:5]
led = Ledger.from_url(url, prefix=prefix, lease_ms=1000)
with child_tracing(spans_file) as tracer, tracer.start_as_current_span("agent attempt 1"):
    asyncio.run(DurableRunner.run(agent_for("seq"), "go", run_id=run_id, ledger=led))
"""


async def test_oa_crashed_run_resumes_in_one_trace(ledger: Ledger, tmp_path: Path) -> None:
    spans_file = tmp_path / "child-spans.jsonl"
    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("agent")
        with tracer.start_as_current_span("agent job") as job:
            # The fourth call, charge_card: its body ran, its outcome was never recorded.
            proc = run_child(CHILD, ledger.url, ledger.prefix, "oa1", str(spans_file),
                             env={"TRACEPARENT": traceparent().get("traceparent", ""),
                                  "OTEL_SDK_DISABLED": "false",
                                  "AGENTLEDGER_CRASH_AT": "before_record:4",
                                  "AL_EFFECTS": str(tmp_path / "effects")})
            assert killed(proc), proc.stderr
            with tracer.start_as_current_span("agent attempt 2") as attempt:
                result = await DurableRunner.run(agent_for("seq"), "go", run_id="oa1",
                                                 ledger=ledger)
        assert result.final_output == "done: reserved book; charged 30 for order 42"
        resumed = cap.span_dicts()
    child = read_spans(spans_file)
    print(render(child + resumed))
    assert trace_ids(child + resumed) == {f"0x{job.get_span_context().trace_id:032x}"}
    assert len(by_name(child, "agentledger ")) == 3 and not by_name(child, "agentledger run")
    run = by_name(resumed, "agentledger run")[0]
    assert run["parent_id"] == f"0x{attempt.get_span_context().span_id:016x}"
    assert run["attributes"]["agentledger.run.resumed"] is True
    steps = [s for s in resumed if s["name"].startswith("agentledger ") and s is not run]
    assert all(s["parent_id"] == run["context"]["span_id"] for s in steps)
    state = [(s["attributes"][ATTR + "name"], s["attributes"][ATTR + "replayed"],
              s["attributes"][ATTR + "in_doubt"]) for s in steps]
    assert ("reserve", True, False) in state
    assert ("charge_card", False, True) in state
    assert any(not replayed and not doubt for _, replayed, doubt in state)


class Collector(TracingProcessor):
    """The SDK's own trace, kept in memory (its default processor would export it)."""

    def __init__(self) -> None:
        self.traces: list[Any] = []
        self.spans: list[Any] = []

    def on_trace_start(self, trace: Any) -> None:
        self.traces.append(trace)

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


async def test_oa_spans_name_the_sdks_own_trace(ledger: Ledger, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AL_EFFECTS", str(tmp_path / "effects"))
    collector = Collector()
    set_trace_processors([collector])
    set_tracing_disabled(False)
    try:
        with captured() as cap:
            await DurableRunner.run(agent_for("seq"), "go", run_id="oa-traced", ledger=ledger)
            spans = cap.span_dicts()
    finally:
        set_tracing_disabled(True)
        set_trace_processors([])
    [sdk_trace] = collector.traces
    steps = [s for s in spans if s["name"].startswith("agentledger ")
             and s["name"] != "agentledger run"]
    assert len(steps) == 5
    assert {s["attributes"]["openai_agents.trace_id"] for s in steps} == {sdk_trace.trace_id}
    sdk_spans = {s.span_id for s in collector.spans}
    assert all(s["attributes"]["openai_agents.span_id"] in sdk_spans for s in steps)
