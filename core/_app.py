"""``App``: pipelines as named entry points that workers run from a queue.

    app = agentledger.App(ledger)

    @app.pipeline("support")
    def support(input, run):            # or async def; ``run`` is the RunSession
        return answer(input["question"])

    run_id = app.submit("support", {"question": "..."})
    app.result(run_id, timeout=60)

``agentledger worker module:app`` runs the queued runs (see ``_worker.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import CorruptRecordError, LedgerError
from ._keys import check_run_id
from ._ledger import Ledger
from ._queue import DEFAULT_SHARDS, RunQueue, app_key, is_outage
from ._records import RunRecord, RunStatus, parse_outcome

__all__ = ["App", "Pipeline"]

F = TypeVar("F", bound=Callable[..., Any])


def _ended(run: RunRecord | None) -> bool:
    """The run record says the run is over (or it has expired)."""
    return run is None or run.status in (RunStatus.COMPLETED, RunStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A registered entry point."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    max_retries: int
    """How many times a failing run is tried again (with backoff) before it stays failed."""
    backoff_s: float
    """The first retry's delay; each next one doubles it, up to ``backoff_max_s``."""
    backoff_max_s: float

    def backoff(self, failures: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, failures - 1)))


class App:
    """Named pipelines over one ledger, and the queue their runs go through.

    shards: how many streams the queue is spread over (each under a hash tag of its own, so a
    Redis Cluster spreads them across its masters). Every submitter and worker of one prefix
    must use the same number.
    """

    def __init__(self, ledger: Ledger, *, shards: int = DEFAULT_SHARDS, max_retries: int = 3,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0) -> None:
        self.ledger = ledger
        self.queue = RunQueue(ledger, shards)
        self.pipelines: dict[str, Pipeline] = {}
        self._defaults = (max_retries, backoff_s, backoff_max_s)

    def pipeline(self, name: str | None = None, *, max_retries: int | None = None,
                 backoff_s: float | None = None, backoff_max_s: float | None = None
                 ) -> Callable[[F], F]:
        """Register ``fn(input, run)`` (sync or async) as the pipeline ``name`` (default: the
        function's name). The function is returned unchanged."""

        def register(fn: F) -> F:
            key = name or fn.__name__
            if key in self.pipelines:
                raise ValueError(f"a pipeline named {key!r} is already registered")
            d_retries, d_backoff, d_max = self._defaults
            self.pipelines[key] = Pipeline(
                key, fn, inspect.iscoroutinefunction(fn),
                d_retries if max_retries is None else max_retries,
                d_backoff if backoff_s is None else backoff_s,
                d_max if backoff_max_s is None else backoff_max_s)
            return fn

        return register

    def _name(self, pipeline: str | Callable[..., Any]) -> str:
        if isinstance(pipeline, str):
            name = pipeline
        else:
            name = next((p.name for p in self.pipelines.values() if p.fn is pipeline), "")
        if name not in self.pipelines:
            raise LedgerError(f"no pipeline {pipeline!r}; registered: {sorted(self.pipelines)}")
        return name

    # ---- submitting -----------------------------------------------------------------------
    def _prepare(self, pipeline: str | Callable[..., Any], input: Any, run_id: str | None
                 ) -> tuple[str, str, str]:
        name = self._name(pipeline)
        rid = check_run_id(run_id) if run_id is not None else uuid.uuid4().hex
        return rid, name, self.ledger.codec.dumps(input)

    def submit(self, pipeline: str | Callable[..., Any], input: Any = None, *,
               run_id: str | None = None) -> str:
        """Store ``input`` with a new run of ``pipeline`` and queue it; return the run id.
        Submitting a run id again queues it again unless it has ended (it never runs twice
        at once: the run's lease admits one executor)."""
        rid, name, data = self._prepare(pipeline, input, run_id)
        self.queue.submit(rid, name, data)
        return rid

    async def asubmit(self, pipeline: str | Callable[..., Any], input: Any = None, *,
                      run_id: str | None = None) -> str:
        rid, name, data = self._prepare(pipeline, input, run_id)
        await self.queue.asubmit(rid, name, data)
        return rid

    def retry(self, run_id: str) -> None:
        """Queue a run that stayed failed once more, with a fresh count of retries. Its
        recorded steps replay; the ones that failed run again."""
        rec = self.queue.app_record(check_run_id(run_id))
        if not rec:
            raise LedgerError(f"run {run_id!r} was never submitted to a pipeline")
        self.queue.reset_for_retry(run_id)
        self.queue.enqueue(run_id, "retry")

    # ---- results --------------------------------------------------------------------------
    def _decode(self, run_id: str, raw: str) -> Any:
        where = f"{app_key(self.ledger.prefix, run_id)} outcome"
        data = parse_outcome(where, raw)
        if data["ok"]:
            return self.ledger.codec.decode(data.get("value"))
        err = data.get("error")
        if not isinstance(err, dict):
            raise CorruptRecordError(where, "recorded error is not an object")
        raise self.ledger.codec.decode_error(err)

    def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to end for good and return the pipeline's value, or raise its
        error (after its retries). ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            try:
                raw = self.queue.outcome(run_id)
                # The worker records the outcome, then ends the run: wait for both, so that
                # whoever gets the value also sees the run ended and its lease released.
                if raw and not _ended(self.ledger.get_run(run_id)):
                    raw = ""
            except Exception as e:  # ride out a Redis restart or a failover until the deadline
                if not is_outage(e) or (deadline is not None and time.monotonic() >= deadline):
                    raise
                raw = ""
            if raw is None:
                raise LedgerError(f"run {run_id!r} was never submitted to a pipeline")
            if raw:
                return self._decode(run_id, raw)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id!r} has not ended after {timeout} s")
            time.sleep(pause)
            pause = min(0.1, pause * 1.5)

    async def aresult(self, run_id: str, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            try:
                raw = await self.queue.aoutcome(run_id)
                if raw and not _ended(await self.ledger.aget_run(run_id)):
                    raw = ""
            except Exception as e:
                if not is_outage(e) or (deadline is not None and time.monotonic() >= deadline):
                    raise
                raw = ""
            if raw is None:
                raise LedgerError(f"run {run_id!r} was never submitted to a pipeline")
            if raw:
                return self._decode(run_id, raw)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id!r} has not ended after {timeout} s")
            await asyncio.sleep(pause)
            pause = min(0.1, pause * 1.5)
