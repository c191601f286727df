"""agentledger.otel with CrewAI, on the real OpenTelemetry SDK: a crew SIGKILLed inside a
tool and kicked off again shows its replayed, re-run and executed steps in one trace, under
the span the user started around ``kickoff``."""

from __future__ import annotations

from pathlib import Path

from _otel_support import by_name, captured, read_spans, render, trace_ids, traceparent
from crew_fakes import build_crew

from _support import killed, run_child
from agentledger import Ledger
from agentledger.crewai import DurableCrewHandler

ATTR = "agentledger.step."
CHILD = """
import sys
sys.path.insert(0, "tests/crewai")
from _otel_support import child_tracing
from crew_fakes import build_crew
from agentledger import Ledger
from agentledger.crewai import DurableCrewHandler

url, prefix, run_id, spans_file = sys.argv[1:5]
led = Ledger.from_url(url, prefix=prefix, lease_ms=1000)
crew = build_crew()
DurableCrewHandler(run_id, ledger=led).attach(crew)
with child_tracing(spans_file) as tracer, tracer.start_as_current_span("crew attempt 1"):
    crew.kickoff(inputs={"topic": "launch"})
"""


def test_crew_crashed_kickoff_resumes_in_one_trace(ledger: Ledger, tmp_path: Path,
                                                    monkeypatch: object) -> None:
    spans_file = tmp_path / "child-spans.jsonl"
    effects = tmp_path / "effects"
    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("agent")
        with tracer.start_as_current_span("crew job") as job:
            proc = run_child(CHILD, ledger.url, ledger.prefix, "crew1", str(spans_file),
                             env={"TRACEPARENT": traceparent().get("traceparent", ""),
                                  "OTEL_SDK_DISABLED": "false", "CREW_EFFECTS": str(effects),
                                  "CREW_KILL_AFTER_EMAIL": "1"})
            assert killed(proc), proc.stderr
            crew = build_crew()
            DurableCrewHandler("crew1", ledger=ledger).attach(crew)
            with tracer.start_as_current_span("crew attempt 2") as attempt:
                out = crew.kickoff(inputs={"topic": "launch"})
        assert out.raw
        resumed = cap.span_dicts()
    child = read_spans(spans_file)
    print(render(child + resumed))
    assert trace_ids(child + resumed) == {f"0x{job.get_span_context().trace_id:032x}"}
    assert by_name(child, "agentledger ") and not by_name(child, "agentledger run")
    run = by_name(resumed, "agentledger run")[0]
    assert run["parent_id"] == f"0x{attempt.get_span_context().span_id:016x}"
    assert run["attributes"]["agentledger.run.resumed"] is True
    steps = [s for s in resumed if s["name"].startswith("agentledger ") and s is not run]
    assert all(s["parent_id"] == run["context"]["span_id"] for s in steps)
    state = [(s["attributes"][ATTR + "kind"], s["attributes"][ATTR + "name"],
              s["attributes"][ATTR + "replayed"], s["attributes"][ATTR + "in_doubt"])
             for s in steps]
    assert any(replayed for *_, replayed, _ in state)
    assert ("tool", "send_email", False, True) in state
    assert any(not replayed and not doubt for *_, replayed, doubt in state)
