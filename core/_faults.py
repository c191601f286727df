"""Named crash points for crash tests (the idea of DBOS's debug triggers).

``AGENTLEDGER_CRASH_AT=after_claim:3`` makes the process SIGKILL itself the third time any step
reaches the point ``after_claim``. Points: ``before_claim`` (nothing recorded yet),
``after_claim`` (intent recorded, body not started), ``before_record`` (body done, outcome not
recorded), ``after_record`` (outcome recorded, the framework has not seen it). Savers that
persist a framework's own state add theirs: ``before_checkpoint`` / ``after_checkpoint`` around
a checkpoint write, ``before_writes`` / ``after_writes`` around a task's pending writes
(LangGraph's ``put`` and ``put_writes``). Unset, this costs one global lookup per boundary.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["POINTS", "crash_point"]

POINTS = ("before_claim", "after_claim", "before_record", "after_record",
          "before_checkpoint", "after_checkpoint", "before_writes", "after_writes")


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, n = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"AGENTLEDGER_CRASH_AT: unknown point {name!r}; use one of {POINTS}")
    return name, int(n or "1")


_target = _parse(os.environ.get("AGENTLEDGER_CRASH_AT"))
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    if _target is None or _target[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == _target[1]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
