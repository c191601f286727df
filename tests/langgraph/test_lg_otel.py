"""agentledger.otel with LangGraph, on the real OpenTelemetry SDK: a graph SIGKILLed inside a
call and resumed shows its replayed, re-run and executed calls in the agent's one trace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _otel_support import by_name, captured, read_spans, render, trace_ids, traceparent

from _support import killed, run_child
from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer

sys.path.insert(0, str(Path(__file__).parent / "children"))
import lg_pipeline as pipeline

ATTR = "agentledger.step."
CHILD = """
import sys
sys.path.insert(0, "tests/langgraph/children")
from _otel_support import child_tracing
import lg_pipeline as pipeline
from agentledger import Ledger
from agentledger.langgraph import DurableCheckpointer

url, prefix, thread, spans_file = sys.argv[1:5]
led = Ledger.from_url(url, prefix=prefix, lease_ms=1000)
graph = pipeline.build(DurableCheckpointer(led))
with child_tracing(spans_file) as tracer, tracer.start_as_current_span("agent attempt 1"):
    pipeline.run_to_end(graph, {"configurable": {"thread_id": thread}}, durability="sync")
"""


def test_lg_crashed_graph_resumes_in_the_agents_trace(ledger: Ledger, tmp_path: Path) -> None:
    spans_file = tmp_path / "child-spans.jsonl"
    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("agent")
        with tracer.start_as_current_span("agent job") as job:
            # The eighth call, record_note in the finish node: its body ran, its outcome was
            # never recorded.
            proc = run_child(CHILD, ledger.url, ledger.prefix, "t1", str(spans_file),
                             env={"TRACEPARENT": traceparent().get("traceparent", ""),
                                  "OTEL_SDK_DISABLED": "false",
                                  "AGENTLEDGER_CRASH_AT": "before_record:8",
                                  "LG_EFFECTS": str(tmp_path / "effects")})
            assert killed(proc), proc.stderr
            graph = pipeline.build(DurableCheckpointer(ledger))
            with tracer.start_as_current_span("agent attempt 2"):
                values = pipeline.run_to_end(graph, {"configurable": {"thread_id": "t1"}},
                                             durability="sync")
        assert values["notes"][1] == "noted finished"
        resumed = cap.span_dicts()
    child = read_spans(spans_file)
    text = render(child + resumed)
    print(text)
    if os.environ.get("AGENTLEDGER_TRACE_OUT"):  # the example trace in docs/observability.md
        Path(os.environ["AGENTLEDGER_TRACE_OUT"]).write_text(text + "\n")
    assert trace_ids(child + resumed) == {f"0x{job.get_span_context().trace_id:032x}"}
    # The child ended the spans of the seven calls it recorded; its run span died with it.
    assert len(by_name(child, "agentledger ")) == 7 and not by_name(child, "agentledger run")
    run = by_name(resumed, "agentledger run")[0]
    assert run["attributes"]["agentledger.run.resumed"] is True
    steps = [s for s in resumed if s["name"] != "agentledger run" and
             s["name"].startswith("agentledger ")]
    assert all(s["parent_id"] == run["context"]["span_id"] for s in steps)
    state = [(s["attributes"][ATTR + "name"], s["attributes"][ATTR + "replayed"],
              s["attributes"][ATTR + "in_doubt"]) for s in steps]
    assert ("send_email", True, False) in state  # the finish node's first call, replayed
    assert ("record_note", False, True) in state  # the call in flight, run again
    assert any(not replayed and not doubt for _, replayed, doubt in state)
    doubt = next(s for s in steps if s["attributes"][ATTR + "in_doubt"])
    assert [e["name"] for e in doubt["events"]] == ["agentledger.in_doubt_rerun"]


def test_lg_a_span_started_in_a_node_is_the_parent_of_its_calls(ledger: Ledger) -> None:
    from typing import Any, TypedDict

    from langgraph.graph import START, StateGraph

    class S(TypedDict):
        out: str

    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("agent")
        chat = pipeline.ScriptedChat()
        node_span: list[Any] = []

        def node(state: S) -> dict[str, str]:
            with tracer.start_as_current_span("my node") as span:
                node_span.append(span)
                return {"out": str(chat.invoke("summarise:it").content)}

        g = StateGraph(S)
        g.add_node("n", node)
        g.add_edge(START, "n")
        graph = g.compile(checkpointer=DurableCheckpointer(ledger))
        with tracer.start_as_current_span("agent"):
            assert graph.invoke({"out": ""}, {"configurable": {"thread_id": "n1"}}) == {
                "out": "summary of it"}
        spans = cap.span_dicts()
    call = by_name(spans, "agentledger llm")[0]
    assert call["parent_id"] == f"0x{node_span[0].get_span_context().span_id:016x}"
    assert len(trace_ids(spans)) == 1
