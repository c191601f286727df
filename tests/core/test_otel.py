"""agentledger.otel with the real OpenTelemetry SDK: spans per run and step, nested in the
caller's span, metrics, decisions, and a SIGKILLed run resumed in the same trace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _otel_support import by_name, captured, read_spans, render, trace_ids, traceparent
from opentelemetry import trace

import agentledger
from _support import killed, run_child
from agentledger import ApprovalPending, Ledger, _otel

ATTR = "agentledger.step."


@agentledger.step
def fetch(n: int) -> int:
    return n * 10


@agentledger.step
def boom() -> None:
    raise ValueError("the tool broke")


def test_off_by_default_costs_nothing_but_a_check(ledger: Ledger) -> None:
    assert _otel.active is None
    with ledger.run("plain") as session:
        start = session.begin(agentledger.StepCall(kind="tool", name="t", inputs=1))
        session.record(start, 2)
        assert session.otel is None and start.span is None


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import agentledger.otel

    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ImportError, match=r"pip install 'agentledger\[otel\]'"):
        agentledger.otel.instrument()
    assert _otel.active is None


def test_run_and_step_spans_nest_in_the_callers_span(ledger: Ledger) -> None:
    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("user")
        with tracer.start_as_current_span("agent") as agent, ledger.run("r1", kind="demo"):
            assert fetch(1) == 10 and fetch(2) == 20
            with pytest.raises(ValueError):
                boom()
        spans = cap.span_dicts()
    print(render(spans))
    run = by_name(spans, "agentledger run")[0]
    assert run["parent_id"] == f"0x{agent.get_span_context().span_id:016x}"
    assert run["attributes"]["agentledger.run.id"] == "r1"
    assert run["attributes"]["agentledger.run.status"] == "completed"
    assert run["attributes"]["agentledger.run.resumed"] is False
    steps = by_name(spans, "agentledger step")
    assert [s["name"] for s in steps] == ["agentledger step fetch"] * 2 + ["agentledger step boom"]
    assert all(s["parent_id"] == run["context"]["span_id"] for s in steps)
    first = steps[0]["attributes"]
    assert first[ATTR + "key"] == "step:fetch#1" and first[ATTR + "kind"] == "step"
    assert first[ATTR + "name"] == "fetch" and first[ATTR + "status"] == "completed"
    assert first[ATTR + "attempt"] == 1 and first[ATTR + "replayed"] is False
    assert first[ATTR + "in_doubt"] is False
    assert first[ATTR + "idempotency_key"].startswith("al-")
    assert steps[2]["attributes"][ATTR + "status"] == "failed"
    assert steps[2]["status"]["status_code"] == "ERROR"
    assert [e["name"] for e in steps[2]["events"]] == ["exception"]
    assert len(trace_ids(spans)) == 1


def test_metrics_count_executed_failed_and_runs(ledger: Ledger) -> None:
    with captured() as cap:
        with ledger.run("m1"):
            fetch(1)
            with pytest.raises(ValueError):
                boom()
        with ledger.run("m1"):  # completed: a second opener replays both
            fetch(1)
            with pytest.raises(ValueError):
                boom()
        assert cap.total("agentledger.steps.executed", {ATTR + "status": "completed"}) == 1
        assert cap.total("agentledger.steps.executed", {ATTR + "status": "failed"}) == 1
        assert cap.total("agentledger.steps.failed") == 1
        assert cap.total("agentledger.steps.replayed") == 2
        assert cap.total("agentledger.runs", {"agentledger.run.status": "completed"}) == 2
        assert cap.total("agentledger.step.record.duration") == 2  # histogram counts
        assert cap.total("agentledger.step.duration") == 2
        replayed = [s for s in by_name(cap.span_dicts(), "agentledger step")
                    if s["attributes"][ATTR + "replayed"]]
    assert [s["attributes"][ATTR + "status"] for s in replayed] == ["completed", "failed"]


def test_approval_request_decision_and_pending_gauge(ledger: Ledger) -> None:
    with captured(ledger=ledger) as cap:
        with pytest.raises(ApprovalPending), ledger.run("a1"):
            fetch(1)
            agentledger.approval("pay", {"amount": 5})
        assert cap.total("agentledger.approvals.pending") == 1
        assert cap.total("agentledger.approvals.requested") == 1
        ledger.decide("a1", approved=True, by="ann", note="fine")
        assert cap.total("agentledger.approvals.pending") == 0
        assert cap.total("agentledger.decisions", {"agentledger.decision.approved": True}) == 1
        with ledger.run("a1"):
            fetch(1)
            assert agentledger.approval("pay", {"amount": 5}).approved
        spans = cap.span_dicts()
    print(render(spans))
    approvals = by_name(spans, "agentledger approval pay")
    assert [s["attributes"][ATTR + "status"] for s in approvals] == ["waiting", "completed"]
    assert [e["name"] for e in approvals[0]["events"]] == ["agentledger.approval_requested"]
    decision = approvals[1]["events"][0]
    assert decision["name"] == "agentledger.decision"
    assert decision["attributes"]["agentledger.decision.by"] == "ann"
    assert decision["attributes"]["agentledger.decision.approved"] is True
    decide = by_name(spans, "agentledger decide")[0]["attributes"]
    assert decide["agentledger.step.key"] == "approval:pay#1"
    runs = by_name(spans, "agentledger run")
    assert [r["attributes"]["agentledger.run.status"] for r in runs] == ["waiting", "completed"]


CHILD = """
import os, signal, sys
from _otel_support import child_tracing
import agentledger
from agentledger import Ledger

url, prefix, run_id, spans_file, policy = sys.argv[1:6]

@agentledger.step(in_doubt=policy)
def act(n):
    if n == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # inside the third step's body
    return n * 10

led = Ledger.from_url(url, prefix=prefix, lease_ms=1000)
with child_tracing(spans_file) as tracer, tracer.start_as_current_span("worker attempt 1"):
    with led.run(run_id):
        [act(n) for n in range(1, 6)]
"""


def _crash_child(ledger: Ledger, tmp_path: Path, policy: str) -> list[dict[str, object]]:
    spans_file = tmp_path / "child-spans.jsonl"
    proc = run_child(CHILD, ledger.url, ledger.prefix, "crash", str(spans_file), policy,
                     env={"TRACEPARENT": traceparent().get("traceparent", ""),
                          "OTEL_SDK_DISABLED": "false"})
    assert killed(proc), proc.stderr
    return read_spans(spans_file)


@agentledger.step(in_doubt="rerun")
def act(n: int) -> int:
    return n * 10


def test_sigkilled_run_resumes_in_one_trace(ledger: Ledger, tmp_path: Path) -> None:
    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("user")
        with tracer.start_as_current_span("agent job") as job:
            child_spans = _crash_child(ledger, tmp_path, "rerun")
            with tracer.start_as_current_span("worker attempt 2"), \
                    ledger.run("crash", on_busy="takeover"):
                assert [act(n) for n in range(1, 6)] == [10, 20, 30, 40, 50]
        spans = child_spans + cap.span_dicts()
    print(render(spans))
    # The child ended the spans of the two steps it recorded; its run span died with it.
    assert [s["name"] for s in child_spans] == ["agentledger step act"] * 2
    assert trace_ids(spans) == {f"0x{job.get_span_context().trace_id:032x}"}
    resumed = by_name(cap.span_dicts(), "agentledger step act")
    attrs = [s["attributes"] for s in resumed]
    assert [a[ATTR + "replayed"] for a in attrs] == [True, True, False, False, False]
    assert [a[ATTR + "in_doubt"] for a in attrs] == [False, False, True, False, False]
    assert [a[ATTR + "attempt"] for a in attrs] == [1, 1, 2, 1, 1]
    assert [e["name"] for e in resumed[2]["events"]] == ["agentledger.in_doubt_rerun"]
    assert resumed[2]["events"][0]["attributes"][ATTR + "idempotency_key"] == \
        attrs[2][ATTR + "idempotency_key"]
    run = by_name(cap.span_dicts(), "agentledger run")[0]["attributes"]
    assert run["agentledger.run.resumed"] is True
    assert run["agentledger.run.steps_replayed"] == 2
    assert run["agentledger.run.steps_executed"] == 3
    assert cap.total("agentledger.steps.in_doubt", {ATTR + "policy": "rerun"}) == 1


def test_in_doubt_step_under_fail_policy_is_an_error_span(ledger: Ledger, tmp_path: Path) -> None:
    @agentledger.step(name="act", in_doubt="fail")
    def act_or_fail(n: int) -> int:
        return n * 10

    with captured() as cap:
        _crash_child(ledger, tmp_path, "fail")
        with pytest.raises(agentledger.InDoubtStepError), \
                ledger.run("crash", on_busy="takeover"):
            [act_or_fail(n) for n in range(1, 6)]
        spans = cap.span_dicts()
    doubt = [s for s in by_name(spans, "agentledger step act")
             if s["attributes"][ATTR + "status"] == "in_doubt"]
    assert len(doubt) == 1 and doubt[0]["status"]["status_code"] == "ERROR"
    assert doubt[0]["events"][0]["name"] == "agentledger.in_doubt"
    assert cap.total("agentledger.steps.in_doubt", {ATTR + "policy": "fail"}) == 1
    run = by_name(spans, "agentledger run")[0]
    assert run["attributes"]["agentledger.run.status"] == "failed"


def test_a_span_started_inside_the_run_is_the_steps_parent(ledger: Ledger) -> None:
    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("user")
        with tracer.start_as_current_span("agent") as agent:
            with ledger.run("inner"):
                with tracer.start_as_current_span("plan node") as node:
                    fetch(1)
                fetch(2)
            # The run leaves nothing attached behind it.
            assert trace.get_current_span() is agent
        spans = cap.span_dicts()
    run = by_name(spans, "agentledger run")[0]["context"]["span_id"]
    parents = [s["parent_id"] for s in by_name(spans, "agentledger step")]
    assert parents == [f"0x{node.get_span_context().span_id:016x}", run]


class Unreadable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@agentledger.step
def weird() -> None:
    raise Unreadable()


def test_an_error_whose_text_cannot_be_read_never_breaks_the_step(ledger: Ledger) -> None:
    with captured() as cap:
        with ledger.run("weird"), pytest.raises(Unreadable):
            weird()
        spans = cap.span_dicts()
    step = by_name(spans, "agentledger step weird")[0]
    assert step["attributes"][ATTR + "status"] == "failed"
    event = step["events"][0]["attributes"]
    assert event["exception.type"] == "Unreadable"
    assert event["exception.message"] == "<its text could not be read>"
    assert by_name(spans, "agentledger run")[0]["attributes"]["agentledger.run.status"] == \
        "completed"


def test_spans_a_step_body_starts_are_children_of_the_step(ledger: Ledger) -> None:
    with captured() as cap:
        tracer = cap.tracer_provider.get_tracer("http client")

        @agentledger.step(name="call_api")
        def call_api(n: int) -> int:
            with tracer.start_as_current_span("POST /charge"):
                return n

        @agentledger.step(name="acall_api")
        async def acall_api(n: int) -> int:
            with tracer.start_as_current_span("POST /refund"):
                return n

        with tracer.start_as_current_span("agent") as agent:
            with ledger.run("http"):
                call_api(1)
            assert trace.get_current_span() is agent

            async def main() -> None:
                async with ledger.arun("ahttp"):
                    await acall_api(2)

            import asyncio

            asyncio.run(main())
            assert trace.get_current_span() is agent
        spans = cap.span_dicts()
    for step, child in (("agentledger step call_api", "POST /charge"),
                        ("agentledger step acall_api", "POST /refund")):
        step_span = by_name(spans, step)[0]
        assert by_name(spans, child)[0]["parent_id"] == step_span["context"]["span_id"]
