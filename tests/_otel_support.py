"""The real OpenTelemetry SDK for the tests of agentledger.otel: in-memory span exporter and
metric reader in the test process, spans appended to a JSON-lines file in a child (one line
per ended span, fsynced, so a SIGKILLed child leaves every span it ended), a W3C traceparent
handed to a child so that a crash and its resume can share one trace, and a text rendering of
a trace."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import agentledger.otel


@dataclass
class Captured:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def span_dicts(self) -> list[dict[str, Any]]:
        return [as_dict(s) for s in self.spans.get_finished_spans()]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of each data point of metric ``name`` (the histogram's count)."""
        data = self.metrics.get_metrics_data()
        out: list[tuple[dict[str, Any], Any]] = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        for p in m.data.data_points:
                            out.append((dict(p.attributes or {}),
                                        getattr(p, "value", None) if hasattr(p, "value")
                                        else p.count))
        return out

    def total(self, name: str, attrs: dict[str, Any] | None = None) -> Any:
        """The sum over the points whose attributes include ``attrs``."""
        return sum(v for a, v in self.points(name)
                   if all(a.get(k) == x for k, x in (attrs or {}).items()))


@contextmanager
def captured(ledger: Any = None) -> Iterator[Captured]:
    """Real SDK providers, instrumented; uninstrumented afterwards. The suites run with
    OTEL_SDK_DISABLED=true (no framework telemetry), which would make these providers no-ops:
    it is lifted while they are made and put back afterwards."""
    disabled = os.environ.pop("OTEL_SDK_DISABLED", None)
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    agentledger.otel.instrument(tracer_provider=tp, meter_provider=mp, ledger=ledger)
    try:
        yield Captured(spans, reader, tp, mp)
    finally:
        agentledger.otel.uninstrument()
        tp.shutdown()
        mp.shutdown()
        if disabled is not None:
            os.environ["OTEL_SDK_DISABLED"] = disabled


class FileSpanExporter(SpanExporter):
    """Appends each ended span as one JSON line and fsyncs: what a SIGKILL cannot take back."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as f:
            for s in spans:
                f.write(json.dumps(as_dict(s)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return SpanExportResult.SUCCESS


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(span.to_json())
    return d


def read_spans(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def traceparent() -> dict[str, str]:
    """The current trace context as W3C headers (what a job queue would carry)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def child_tracing(spans_file: str, tracer_name: str = "child") -> Iterator[trace.Tracer]:
    """In a child: spans to ``spans_file``, agentledger instrumented, and the parent trace
    from the TRACEPARENT environment variable made current."""
    os.environ.pop("OTEL_SDK_DISABLED", None)
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(FileSpanExporter(spans_file)))
    agentledger.otel.instrument(tracer_provider=tp, meter_provider=MeterProvider())
    parent = propagate.extract({"traceparent": os.environ.get("TRACEPARENT", "")})
    token = context.attach(parent)
    try:
        yield tp.get_tracer(tracer_name)
    finally:
        context.detach(token)
        tp.shutdown()


def by_name(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith(prefix)]


def trace_ids(spans: list[dict[str, Any]]) -> set[str]:
    return {s["context"]["trace_id"] for s in spans}


def render(spans: list[dict[str, Any]]) -> str:
    """A trace as an indented tree, children in start order: name and the step attributes."""
    ids = {s["context"]["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        children.setdefault(s["parent_id"], []).append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s["start_time"]):
            a = s["attributes"]
            bits = [f"{k.split('.')[-1]}={a[k]}" for k in (
                "agentledger.run.id", "agentledger.run.resumed", "agentledger.run.status",
                "agentledger.step.status", "agentledger.step.attempt",
                "agentledger.step.replayed", "agentledger.step.in_doubt") if k in a]
            events = [e["name"] for e in s.get("events", [])]
            lines.append("  " * depth + s["name"] + (f"  [{' '.join(bits)}]" if bits else "")
                         + (f"  events: {', '.join(events)}" if events else ""))
            walk(s["context"]["span_id"], depth + 1)

    walk(None, 0)
    # Spans whose parent never ended (its process was killed): under a line saying so.
    for parent in sorted(p for p in children if p is not None and p not in ids):
        lines.append(f"(span {parent} never ended: its process was killed)")
        walk(parent, 1)
    return "\n".join(lines)
