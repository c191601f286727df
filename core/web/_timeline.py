"""A run's steps as a timeline (bars on a time axis, grouped by scope) and a step's full detail.

Display only: recorded values are read as JSON and untagged (``plain``), never decoded into
objects, so any record can be shown safely.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._display import plain
from .._records import RunRecord, StepRecord, StepStatus

__all__ = ["Bar", "Timeline", "attempts_by_step", "step_detail", "step_state", "timeline"]

WIDTH = 640  # px of the time axis
ROW = 22  # px per row
LABEL = 190  # px for the row labels left of the axis
EARLIER_SHOWN = 5  # earlier attempts listed in a step's detail (the newest ones)
ERROR_CHARS = 300  # of each earlier attempt's error message

# A step that failed runs again, in a retried attempt of its unit of work (restart_numbering),
# under "<key>.r<attempt>"; the earlier attempts stay recorded under their own keys.
_ATTEMPT_KEY = re.compile(r"^(?P<base>.*#\d+)\.r(?P<n>\d+)$")


def _attempt_of(key: str) -> tuple[str, int]:
    m = _ATTEMPT_KEY.match(key)
    return (m["base"], int(m["n"])) if m else (key, 1)


def attempts_by_step(steps: Sequence[StepRecord]) -> dict[str, list[StepRecord]]:
    """The run's step records grouped by the key of their first attempt."""
    groups: dict[str, list[StepRecord]] = {}
    for s in steps:
        groups.setdefault(_attempt_of(s.key)[0], []).append(s)
    return groups


def _earlier_attempts(step: StepRecord, group: Sequence[StepRecord]) -> list[dict[str, Any]]:
    """The newest few attempts recorded before ``step``, each with its (cut) error."""
    n = _attempt_of(step.key)[1]
    earlier = sorted((_attempt_of(s.key)[1], s) for s in group if _attempt_of(s.key)[1] < n)
    out: list[dict[str, Any]] = []
    for attempt, s in earlier:
        outcome = _json_or_text(s.outcome)
        error = outcome.get("error") if isinstance(outcome, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", ""))
            error = {"type": error.get("type"), "message": message[:ERROR_CHARS]
                     + ("…" if len(message) > ERROR_CHARS else "")}
        out.append({"attempt": attempt, "key": s.key, "status": str(s.status),
                    "executor": s.executor or None, "started": s.started, "ended": s.ended,
                    "error": error})
    # Attempts re-run in place under the same key (in doubt): no outcome, so no error.
    out += [{"attempt": t.attempt, "key": step.key, "status": "in doubt (no outcome)",
             "executor": t.executor or None, "started": t.started, "ended": 0, "error": None}
            for t in step.tried]
    return out[-EARLIER_SHOWN:]


@dataclass(frozen=True, slots=True)
class Bar:
    key: str
    label: str
    state: str  # completed / failed / running / waiting / in-doubt / retry
    replayed: int
    attempts: int
    approval: bool
    x: float
    y: float
    w: float
    title: str


@dataclass(frozen=True, slots=True)
class Group:
    scope: str
    y: float


@dataclass(frozen=True, slots=True)
class Timeline:
    bars: list[Bar]
    groups: list[Group]
    ticks: list[tuple[float, str]]
    width: int
    height: int
    label_width: int


def step_state(step: StepRecord, run_held: bool) -> str:
    """The step's state for people: an in-doubt step is one that started, recorded nothing,
    and has no live executor (or was put to a person as such)."""
    if step.doubt or (step.status == StepStatus.RUNNING and not run_held):
        return "in-doubt"
    return str(step.status)


def run_held(run: RunRecord, now_ms: int) -> bool:
    return bool(run.owner) and run.lease_until > now_ms


def _span_label(ms: float) -> str:
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def timeline(run: RunRecord, steps: list[StepRecord], now_ms: int | None = None) -> Timeline:
    """Bars from each step's start to its end (a step still open ends at now, or at the run's
    last update when the run is not running), rows grouped under their scope."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    held = run_held(run, now)
    open_end = now if str(run.status) == "running" else max(run.updated, run.ended)
    started = [s.started for s in steps if s.started] or [run.created or now]
    t0 = min(started)
    t1 = max([open_end if not s.ended else s.ended for s in steps] + [t0 + 1])
    span = max(t1 - t0, 1)
    scale = WIDTH / span
    ordered = sorted(steps, key=lambda s: (s.scope, s.seq))
    bars: list[Bar] = []
    groups: list[Group] = []
    y = 4.0
    scope: str | None = None
    for s in ordered:
        if s.scope != scope and s.scope:
            groups.append(Group(s.scope, y))
            y += ROW
        scope = s.scope
        start = s.started or t0
        end = s.ended or max(open_end, start)
        state = step_state(s, held)
        dur = _span_label(end - start) if s.ended else "open"
        title = (f"#{s.seq} {s.kind} {s.name}: {state}, {dur}, attempt {s.attempts}"
                 + (f", replayed {s.replays}x" if s.replays else ""))
        bars.append(Bar(key=s.key, label=f"{'  ' if s.scope else ''}#{s.seq} {s.name}",
                        state=state, replayed=s.replays, attempts=s.attempts,
                        approval=str(s.kind) == "approval", x=(start - t0) * scale,
                        y=y, w=max((end - start) * scale, 3.0), title=title))
        y += ROW
    ticks = [(WIDTH * i / 4, "+" + _span_label(span * i / 4)) for i in range(5)]
    return Timeline(bars, groups, ticks, WIDTH, int(y) + 24, LABEL)


def _json_or_text(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return plain(json.loads(raw))
    except ValueError:
        return raw  # a preview cut to its size limit stays text


def step_detail(run: RunRecord, step: StepRecord, now_ms: int | None = None,
                attempts: Mapping[str, list[StepRecord]] | None = None) -> dict[str, Any]:
    """Everything recorded about one step, as plain JSON; ``attempts`` is the run's
    :func:`attempts_by_step` (the step's earlier attempts are listed from it)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    outcome = _json_or_text(step.outcome)
    result: Any = None
    error: Any = None
    if isinstance(outcome, dict) and "ok" in outcome:
        if outcome.get("ok"):
            result = outcome.get("value")
        else:
            error = outcome.get("error")
    conflict = _json_or_text(step.conflict)
    return {
        "key": step.key, "seq": step.seq, "kind": str(step.kind), "name": step.name,
        "scope": step.scope, "status": str(step.status),
        "state": step_state(step, run_held(run, now)),
        "started": step.started, "ended": step.ended, "duration_ms": step.duration_ms,
        "attempts": step.attempts, "replays": step.replays,
        "in_doubt_policy": str(step.policy), "idempotency_key": step.ik,
        "fingerprint": step.fp,
        # The step records the process ("host:pid:random", the run owner id it held) and the
        # fencing token of its last attempt (no process in records made before it was kept);
        # the run's owner is the process holding the run now.
        "executor": step.executor or None, "executor_fence": step.fence,
        "run_owner": run.owner or None,
        "inputs": _json_or_text(step.preview) if step.preview else None,
        "request": _json_or_text(step.request),
        "result": result, "error": error,
        "conflict": conflict,
        "earlier_attempts": _earlier_attempts(
            step, (attempts or {}).get(_attempt_of(step.key)[0], [])),
    }
