"""OpenTelemetry spans and metrics for runs and steps (the ``[otel]`` extra).

    import agentledger.otel
    agentledger.otel.instrument()      # the global tracer and meter providers
    agentledger.otel.uninstrument()

Each run session (one process's hold on a run) is a span, ``agentledger run``, and each step it
begins is a span, ``agentledger <kind> <name>``: executed steps last from begin to record,
replayed steps are instant spans with ``agentledger.step.replayed = true``. Spans take the
OpenTelemetry context current where the run opens and where the step begins as their parent,
so they land inside an agent's trace whenever the framework or the user has a span current
there; a step begun with no span current, or under the span its run was opened under, is a
child of its run's span. Nothing here is imported by the step protocol: it calls the hooks set
in ``agentledger._otel``, which stay None (one global check per point) until ``instrument()``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _otel
from ._errors import ApprovalPending
from ._optional import require
from ._records import Decision, StepKind, StepStatus
from ._session import _text_of, is_control_flow

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._records import StepMeta
    from ._session import RunSession, StepStart

__all__ = ["add_attribute_source", "instrument", "is_instrumented", "uninstrument"]

log = logging.getLogger("agentledger")
F = TypeVar("F", bound=Callable[..., None])

# Attribute names (the ``agentledger.`` namespace).
RUN_ID = "agentledger.run.id"
RUN_KIND = "agentledger.run.kind"
RUN_STATUS = "agentledger.run.status"
RUN_RESUMED = "agentledger.run.resumed"
STEP_KEY = "agentledger.step.key"
STEP_KIND = "agentledger.step.kind"
STEP_NAME = "agentledger.step.name"
STEP_STATUS = "agentledger.step.status"
STEP_ATTEMPT = "agentledger.step.attempt"
STEP_REPLAYED = "agentledger.step.replayed"
STEP_IN_DOUBT = "agentledger.step.in_doubt"
STEP_IK = "agentledger.step.idempotency_key"
# Seconds: from a local round trip to a slow tool call.
_BUCKETS = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0, 60.0]


def instrument(*, tracer_provider: Any = None, meter_provider: Any = None,
               ledger: Ledger | None = None) -> None:
    """Turn on spans and metrics for every run in this process (the global providers unless
    given). Calling it again replaces the providers. With ``ledger``, the gauge
    ``agentledger.approvals.pending`` reports that ledger's pending approvals at each
    collection (one read of Redis per collection)."""
    require("opentelemetry.trace", "otel")
    _otel.active = _Instrumentation(tracer_provider, meter_provider, ledger)


def uninstrument() -> None:
    """Turn it off: the step protocol is back to one global check per hook point."""
    _otel.active = None


def is_instrumented() -> bool:
    return _otel.active is not None


# name -> a function giving attributes for the run and step spans begun here (an adapter's
# handle on its framework's own trace). Called only when instrumented.
_attribute_sources: dict[str, Callable[[], dict[str, str]]] = {}


def add_attribute_source(name: str, source: Callable[[], dict[str, str]]) -> None:
    """Add attributes to every run and step span: ``source()`` is called where the span
    begins. An adapter uses it to name its framework's own trace (the OpenAI Agents SDK's trace
    and span ids); a source that raises is skipped."""
    _attribute_sources[name] = source


def _sourced() -> dict[str, str]:
    out: dict[str, str] = {}
    for source in list(_attribute_sources.values()):
        try:
            out.update(source())
        except Exception:  # telemetry never stops a step
            continue
    return out


class _RunSpan:
    """A session's run span, and the span that was current where the run opened."""

    __slots__ = ("ended", "outer", "span")

    def __init__(self, span: Any, outer: int | None) -> None:
        self.span = span
        self.outer = outer
        self.ended = False


def _never_raises(hook: F) -> F:
    """Telemetry never stops a step: a hook that fails is logged and skipped."""

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            log.warning("agentledger.otel: %s failed; the step goes on", hook.__name__,
                        exc_info=True)

    return guarded  # type: ignore[return-value]


def _error_event(span: Any, error: BaseException) -> None:
    """The span's 'exception' event, with a text that cannot fail (``str()`` of an exception
    may raise), in OpenTelemetry's attribute names."""
    span.add_event("exception", {"exception.type": type(error).__qualname__,
                                 "exception.message": _text_of(error)})


def _step_status(error: BaseException | None) -> str:
    if error is None:
        return str(StepStatus.COMPLETED)
    if isinstance(error, ApprovalPending):
        return "suspended"  # waits for a decision taken inside its body; it runs again
    if is_control_flow(error):
        return "in_doubt"  # stopped without an outcome: a lost lease or Redis, cancellation
    return str(StepStatus.FAILED)


class _Instrumentation:
    """The hooks of :mod:`agentledger._otel`, on the OpenTelemetry API."""

    def __init__(self, tracer_provider: Any, meter_provider: Any, ledger: Ledger | None) -> None:
        from opentelemetry import context, metrics, trace

        from . import __version__

        self._trace = trace
        self._context = context
        self._tracer = trace.get_tracer("agentledger", __version__,
                                        tracer_provider=tracer_provider)
        meter = metrics.get_meter("agentledger", __version__, meter_provider=meter_provider)
        self._executed = meter.create_counter(
            "agentledger.steps.executed", unit="{step}",
            description="Steps run live and recorded, by kind and status (completed, failed)")
        self._replayed = meter.create_counter(
            "agentledger.steps.replayed", unit="{step}",
            description="Steps answered from their record without running")
        self._failed = meter.create_counter(
            "agentledger.steps.failed", unit="{step}",
            description="Steps run live whose recorded outcome is an error")
        self._in_doubt = meter.create_counter(
            "agentledger.steps.in_doubt", unit="{step}",
            description="Steps found in doubt (their process died inside the body), by "
                        "policy: rerun (run again), fail, ask (put to a person)")
        self._record = meter.create_histogram(
            "agentledger.step.record.duration", unit="s",
            description="The round trip that records a live step's outcome",
            explicit_bucket_boundaries_advisory=_BUCKETS)
        self._duration = meter.create_histogram(
            "agentledger.step.duration", unit="s",
            description="A live step from begin (intent recorded) to its outcome recorded",
            explicit_bucket_boundaries_advisory=_BUCKETS)
        self._runs = meter.create_counter(
            "agentledger.runs", unit="{run}",
            description="Run sessions ended, by kind and status (completed, failed, waiting)")
        self._requested = meter.create_counter(
            "agentledger.approvals.requested", unit="{approval}",
            description="Approval requests recorded")
        self._decisions = meter.create_counter(
            "agentledger.decisions", unit="{decision}",
            description="Decisions taken on waiting steps, by approved")
        self._ledger = ledger
        if ledger is not None:
            meter.create_observable_gauge(
                "agentledger.approvals.pending", unit="{approval}",
                description="Approvals waiting for a person in the instrumented ledger",
                callbacks=[self._observe_pending])

    def _observe_pending(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        if _otel.active is not self or self._ledger is None:
            return []  # uninstrumented or replaced: a gauge cannot be unregistered
        return [Observation(len(self._ledger.pending_approvals()),
                            {"agentledger.prefix": self._ledger.prefix})]

    # ---- runs -------------------------------------------------------------------------------
    @_never_raises
    def run_opened(self, session: RunSession) -> None:
        span = self._tracer.start_span("agentledger run", attributes={
            RUN_ID: session.run_id, RUN_KIND: session.kind, RUN_RESUMED: not session.is_new,
            "agentledger.run.prior_status": session.prior_status,
            "agentledger.run.fence": session.fence,
            **(_sourced() if _attribute_sources else {})})
        outer = self._trace.get_current_span().get_span_context()
        session.otel = _RunSpan(span, outer.span_id if outer.is_valid else None)

    @_never_raises
    def run_finished(self, session: RunSession, status: str, error: BaseException | None) -> None:
        self._runs.add(1, {RUN_KIND: session.kind, RUN_STATUS: status})
        state = session.otel
        if not isinstance(state, _RunSpan) or state.ended:
            return
        state.ended = True
        span = state.span
        span.set_attributes({RUN_STATUS: status, "agentledger.run.steps_executed":
                             session.executed, "agentledger.run.steps_replayed": session.replayed})
        if error is not None and status == "failed":
            _error_event(span, error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR,
                                               f"{type(error).__name__}: {_text_of(error)}"[:500]))
        span.end()

    # ---- steps ------------------------------------------------------------------------------
    def _start_step(self, session: RunSession, start: StepStart, kind: str, name: str,
                    attempt: int, in_doubt: bool) -> Any:
        # The span current here is the parent when the framework or the user started it inside
        # the run; with none current, or the one the run was opened under, the run's span. (The
        # run's span is never made current: adapters enter and leave runs across generator and
        # hook boundaries, where an attached context could outlive the run.)
        parent = None
        state = session.otel
        if isinstance(state, _RunSpan):
            here = self._trace.get_current_span().get_span_context()
            if not here.is_valid or here.span_id == state.outer:
                parent = self._trace.set_span_in_context(state.span)
        return self._tracer.start_span(f"agentledger {kind} {name}", context=parent, attributes={
            RUN_ID: session.run_id, STEP_KEY: start.key, STEP_KIND: kind, STEP_NAME: name,
            STEP_ATTEMPT: attempt, STEP_REPLAYED: start.replayed, STEP_IN_DOUBT: in_doubt,
            STEP_IK: start.idempotency_key, **(_sourced() if _attribute_sources else {})})

    @_never_raises
    def step_begun(self, session: RunSession, start: StepStart) -> None:
        call = start.call
        kind, name = (str(call.kind), call.name) if call is not None else ("", start.key)
        in_doubt = not start.replayed and start.attempt > 1
        span = self._start_step(session, start, kind, name, start.attempt, in_doubt)
        attrs = {STEP_KIND: kind}
        if in_doubt:
            # Its process died inside the body (or a person allowed another try): it runs
            # again under the same idempotency key.
            self._in_doubt.add(1, {**attrs, "agentledger.step.policy": "rerun"})
            span.add_event("agentledger.in_doubt_rerun", {
                STEP_ATTEMPT: start.attempt, STEP_IK: start.idempotency_key})
        if start.replayed:
            self._replayed.add(1, attrs)
            ok = bool(start.outcome and start.outcome.get("ok"))
            span.set_attribute(STEP_STATUS, str(StepStatus.COMPLETED if ok else StepStatus.FAILED))
            if kind == StepKind.APPROVAL:
                self._decision_event(session, start, span)
            span.end()
        elif kind == StepKind.APPROVAL:
            # Recorded as waiting; the run stops here until someone decides.
            self._requested.add(1, attrs)
            span.set_attribute(STEP_STATUS, str(StepStatus.WAITING))
            span.add_event("agentledger.approval_requested", {STEP_KEY: start.key})
            span.end()
        else:
            start.span = span

    def _decision_event(self, session: RunSession, start: StepStart, span: Any) -> None:
        outcome = start.outcome or {}
        try:
            value = session.codec.decode(outcome.get("value"), start.key)
            d = value if isinstance(value, Decision) else Decision.model_validate(value)
        except Exception:  # a decision that does not decode fails the run, not its span
            return
        span.add_event("agentledger.decision", {
            "agentledger.decision.approved": d.approved, "agentledger.decision.by": d.by or "",
            "agentledger.decision.note": d.note or "", "agentledger.decision.at_ms": d.at})

    @_never_raises
    def step_stopped(self, session: RunSession, start: StepStart, meta: StepMeta) -> None:
        call = start.call
        kind = str(call.kind) if call is not None else str(meta.kind)
        doubt = meta.status != StepStatus.WAITING or bool(meta.doubt)
        span = self._start_step(session, start, kind, meta.name, meta.attempts, doubt)
        if doubt:
            policy = "ask" if meta.status == StepStatus.WAITING else str(meta.policy)
            self._in_doubt.add(1, {STEP_KIND: kind, "agentledger.step.policy": policy})
            span.add_event("agentledger.in_doubt", {STEP_ATTEMPT: meta.attempts,
                                                    "agentledger.step.policy": policy})
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "step in doubt"))
        span.set_attribute(STEP_STATUS, "in_doubt" if meta.status != StepStatus.WAITING
                           else str(StepStatus.WAITING))
        span.end()

    def step_entered(self, start: StepStart) -> object:
        # Only where the body runs in one frame (RunSession.call/acall): attach and detach are
        # then sure to pair up in the same context.
        try:
            return self._context.attach(self._trace.set_span_in_context(start.span))
        except Exception:
            log.warning("agentledger.otel: could not make a step's span current", exc_info=True)
            return None

    def step_left(self, entered: object) -> None:
        if entered is not None:
            self._context.detach(entered)  # type: ignore[arg-type]

    @_never_raises
    def step_recorded(self, session: RunSession, start: StepStart, error: BaseException | None,
                      record_s: float) -> None:
        call = start.call
        attrs = {STEP_KIND: str(call.kind) if call is not None else ""}
        status = _step_status(error)
        if status in (StepStatus.COMPLETED, StepStatus.FAILED):
            self._executed.add(1, {**attrs, STEP_STATUS: status})
            self._record.record(record_s, attrs)
            self._duration.record(time.perf_counter() - start.t0, attrs)
        if status == StepStatus.FAILED:
            self._failed.add(1, attrs)
        span = start.span
        if span is None:
            return  # begun before instrument()
        start.span = None
        span.set_attribute(STEP_STATUS, status)
        if error is not None and status != "suspended":
            _error_event(span, error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR,
                                               f"{type(error).__name__}"))
        span.end()

    # ---- decisions --------------------------------------------------------------------------
    @_never_raises
    def decided(self, ledger: Ledger, run_id: str, step_key: str, approved: bool,
                by: str | None) -> None:
        self._decisions.add(1, {"agentledger.decision.approved": approved})
        span = self._tracer.start_span("agentledger decide", attributes={
            RUN_ID: run_id, STEP_KEY: step_key, "agentledger.decision.approved": approved,
            "agentledger.decision.by": by or ""})
        span.add_event("agentledger.decision", {"agentledger.decision.approved": approved,
                                                "agentledger.decision.by": by or ""})
        span.end()
