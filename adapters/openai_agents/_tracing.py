"""The SDK's own trace, named on agentledger's OpenTelemetry spans.

The Agents SDK traces through its own system (traces, spans, ``TracingProcessor``s), not
OpenTelemetry, so an OpenTelemetry span cannot take an SDK span as its parent. Each
agentledger span instead carries the ids of the SDK trace and span current where it begins:
the handle to find the same moment in the SDK's trace (the OpenAI dashboard, or wherever a
processor sends it).
"""

from __future__ import annotations

from agents.tracing import get_current_span, get_current_trace

__all__ = ["sdk_trace_attributes"]


def sdk_trace_attributes() -> dict[str, str]:
    out: dict[str, str] = {}
    trace = get_current_trace()
    trace_id = getattr(trace, "trace_id", None) if trace is not None else None
    if trace_id and trace_id != "no-op":  # tracing disabled: the SDK hands out no-op traces
        out["openai_agents.trace_id"] = str(trace_id)
        span = get_current_span()
        span_id = getattr(span, "span_id", None) if span is not None else None
        if span_id and span_id != "no-op":
            out["openai_agents.span_id"] = str(span_id)
    return out
