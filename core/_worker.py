"""``Worker``: runs an App's queued runs, and brings back the ones nobody is running.

A worker reads queue entries (``RunQueue``) while it has free slots, and executes each run
under the run's lease: sync pipelines on a thread pool, async ones as tasks on an event loop
of its own. A background thread heartbeats, keeps its entries from looking idle, takes over
the entries of dead workers (XAUTOCLAIM), moves runs whose retry backoff is over back to the
queue, and looks after the runs in flight (one worker per shard at a time): a run whose
executor died (lease expired, or its pid on this host gone) and a waiting run whose approvals
are all decided are queued again. The lease stays the one guard against two executors.

Stopping (SIGTERM, :meth:`Worker.stop`) drains: no new entries, each run's current step
finishes and records, then the run's lease is released and the run queued again, so another
worker continues it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ._app import App, Pipeline
from ._context import restart_numbering
from ._errors import ApprovalPending, FencedOutError, LedgerUnavailableError, RunBusyError
from ._keys import RunKeys
from ._queue import QueueEntry, WorkerInfo
from ._queue import is_outage as _is_outage
from ._records import SCHEMA_VERSION, RunRecord, RunStatus, StepStatus
from ._session import RunSession
from ._store import _s

__all__ = ["Worker"]

log = logging.getLogger("agentledger.worker")


class _Outage(Exception):
    """Raised inside a worker to leave a run as it is: its lease lapses, its entry stays."""


@dataclass(slots=True)
class _Slot:
    entry: QueueEntry
    session: RunSession | None = None
    future: Future[None] | None = field(default=None, repr=False)


class Worker:
    """Executes an :class:`App`'s runs. ``run()`` blocks until :meth:`stop` (or SIGTERM).

    concurrency: runs executed at once (threads for sync pipelines, tasks for async ones).
    heartbeat_s: how often the worker says it is alive and looks after the shards' runs.
    claim_idle_ms: a queue entry not touched for this long belongs to a dead worker.
    """

    def __init__(self, app: App, *, concurrency: int = 4, name: str | None = None,
                 heartbeat_s: float = 1.0, claim_idle_ms: int | None = None,
                 app_name: str = "") -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.ledger = app.ledger
        self.queue = app.queue
        self.concurrency = concurrency
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.heartbeat_s = heartbeat_s
        self.claim_idle_ms = claim_idle_ms or int(max(5 * heartbeat_s * 1000, 3000))
        self.app_name = app_name
        self.started = int(time.time() * 1000)
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Condition()
        self._draining = threading.Event()
        self._stopped = threading.Event()
        self._reclaimed: list[QueueEntry] = []
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="agentledger-worker")
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Drain: take no new runs; each running run stops after its current step, releases
        its lease and is queued again for another worker."""
        self._draining.set()
        with self._lock:
            for slot in self._slots.values():
                if slot.session is not None:
                    slot.session.stop_requested = True  # the next step raises
            self._lock.notify_all()

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("worker %s: signal %d, draining", self.id, signum)
        self.stop()

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.queue.ensure_groups()
        if any(p.is_async for p in self.app.pipelines.values()):
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True,
                             name="agentledger-worker-loop").start()
        beat = threading.Thread(target=self._beat_loop, daemon=True, name="agentledger-beat")
        beat.start()
        log.info("worker %s: serving %s with concurrency %d", self.id,
                 sorted(self.app.pipelines), self.concurrency)
        try:
            while not self._draining.is_set():
                with self._lock:
                    free = self.concurrency - len(self._slots)
                    if free <= 0:
                        self._lock.wait(0.5)
                        continue
                    reclaimed, self._reclaimed = self._reclaimed[:free], self._reclaimed[free:]
                entries = reclaimed or self._read(free)
                for entry in entries:
                    self._dispatch(entry)
            with self._lock:  # drain: wait for the runs in flight to stop at a step boundary
                while self._slots:
                    self._lock.wait(0.5)
        finally:
            self._stopped.set()
            beat.join(timeout=5)
            self._pool.shutdown(wait=True)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
            with contextlib.suppress(LedgerUnavailableError):
                self.queue.forget_worker(self.id)
            log.info("worker %s: stopped", self.id)

    def _read(self, count: int) -> list[QueueEntry]:
        try:
            return self.queue.read(self.id, count, block_ms=500)
        except Exception as e:
            if not _is_outage(e):
                raise
            log.warning("worker %s: cannot read the queue: %s", self.id, e)
            time.sleep(0.5)
            return []

    def _dispatch(self, entry: QueueEntry) -> None:
        pipeline: Pipeline | None = None
        with self._lock:
            if entry.run_id in self._slots:  # already running here: that execution will do
                self._ack(entry)
                return
            slot = self._slots[entry.run_id] = _Slot(entry)
        if self._loop is not None:
            # Which pipeline a run belongs to is only known after reading its record; an
            # async-capable worker reads it first so it can pick the right executor.
            pipeline = self._pipeline_of(entry)
        if pipeline is not None and pipeline.is_async:
            assert self._loop is not None
            cf = asyncio.run_coroutine_threadsafe(self._aexecute(slot), self._loop)
            cf.add_done_callback(functools.partial(self._release, entry.run_id))
        else:
            fut = self._pool.submit(self._execute, slot)
            fut.add_done_callback(functools.partial(self._release, entry.run_id))

    def _pipeline_of(self, entry: QueueEntry) -> Pipeline | None:
        try:
            name = self.queue.app_record(entry.run_id).get("pipeline", "")
        except Exception as e:
            if not _is_outage(e):
                raise
            return None
        return self.app.pipelines.get(name)

    def _release(self, run_id: str, _done: object = None) -> None:
        with self._lock:
            self._slots.pop(run_id, None)
            self._lock.notify_all()

    def _ack(self, entry: QueueEntry) -> None:
        try:
            self.queue.ack(entry)
        except Exception as e:  # the entry comes back to somebody; harmless
            if not _is_outage(e):
                raise
            log.warning("worker %s: could not acknowledge %s: %s", self.id, entry.entry_id, e)

    # ---- one run --------------------------------------------------------------------------
    def _should_run(self, entry: QueueEntry, rec: dict[str, str], run: RunRecord | None
                    ) -> Pipeline | None:
        """The pipeline to execute the entry's run with, or None when there is nothing to do
        (the entry is acknowledged, except for a pipeline this worker does not serve)."""
        if not rec:
            log.warning("worker %s: run %r has no app record (deleted?)", self.id, entry.run_id)
            self._ack(entry)
            return None
        ended = run is not None and run.status in (RunStatus.COMPLETED, RunStatus.FAILED)
        if rec.get("outcome") and (run is None or ended):
            self._ack(entry)  # it ended for good
            return None
        pipeline = self.app.pipelines.get(rec.get("pipeline", ""))
        if pipeline is None:
            log.error("worker %s: run %r is for pipeline %r, which this app does not have",
                      self.id, entry.run_id, rec.get("pipeline"))
        return pipeline

    def _outcome_ok(self, value: Any) -> str:
        return json.dumps({"v": SCHEMA_VERSION, "ok": True,
                           "value": self.ledger.codec.encode(value)}, separators=(",", ":"))

    def _failure_fields(self, pipeline: Pipeline, rec: dict[str, str], exc: BaseException
                        ) -> tuple[dict[str, str | int], float | None]:
        """The app record's update after a failure, and the retry delay (None: final)."""
        failures = int(rec.get("failures") or 0) + 1
        fields: dict[str, str | int] = {"failures": failures,
                                        "attempt": int(rec.get("attempt") or 1) + 1,
                                        "last_error": f"{type(exc).__name__}: {exc}"[:1000]}
        if failures > pipeline.max_retries:
            fields["outcome"] = json.dumps({"v": SCHEMA_VERSION, "ok": False,
                                            "error": self.ledger.codec.encode_error(exc)})
            return fields, None
        return fields, pipeline.backoff(failures)

    def _opened(self, slot: _Slot, session: RunSession) -> None:
        with self._lock:
            slot.session = session
            if self._draining.is_set():
                session.stop_requested = True

    def _execute(self, slot: _Slot) -> None:
        entry, q, led = slot.entry, self.queue, self.ledger
        try:
            rec = q.app_record(entry.run_id)
            pipeline = self._should_run(entry, rec, led.get_run(entry.run_id))
            if pipeline is None:
                return
            try:
                session = led.open_run(entry.run_id, kind=pipeline.name, wait_timeout_s=0.5)
            except RunBusyError:
                self._ack(entry)  # a live executor has it
                return
            self._opened(slot, session)
            token = session.activate()
            try:
                with restart_numbering(int(rec.get("attempt") or 1)):
                    value = pipeline.fn(led.codec.loads(rec["input"]), session)
                outcome = self._outcome_ok(value)
            except ApprovalPending:
                session.finish(RunStatus.WAITING)
            except FencedOutError:
                if session.finish(RunStatus.RUNNING):  # drained: hand the run on at once
                    q.enqueue(entry.run_id, "drain")
            except Exception as exc:
                if _is_outage(exc):
                    raise _Outage(str(exc)) from exc
                fields, delay = self._failure_fields(pipeline, rec, exc)
                if q.write(entry.run_id, session.fence, fields):
                    if delay is not None:
                        q.delay(entry.run_id, int((time.time() + delay) * 1000))
                    session.finish(RunStatus.FAILED, error=exc)
                    if delay is None:
                        q.retire(entry.run_id)
                    log.info("worker %s: run %r failed (%s)%s", self.id, entry.run_id, exc,
                             "" if delay is None else f"; retry in {delay:.1f} s")
            else:
                if q.write(entry.run_id, session.fence, {"outcome": outcome}):
                    session.finish(RunStatus.COMPLETED)
                    q.retire(entry.run_id)
            finally:
                session.deactivate(token)
                if not session.finished:  # let the lease lapse: the run is recovered
                    session.stop_renewing()
            self._ack(entry)
        except Exception as e:
            self._not_done(entry, e)

    async def _aexecute(self, slot: _Slot) -> None:
        entry, q, led = slot.entry, self.queue, self.ledger
        try:
            rec = await q.aapp_record(entry.run_id)
            pipeline = self._should_run(entry, rec, await led.aget_run(entry.run_id))
            if pipeline is None:
                return
            try:
                session = await led.aopen_run(entry.run_id, kind=pipeline.name,
                                              wait_timeout_s=0.5)
            except RunBusyError:
                self._ack(entry)
                return
            self._opened(slot, session)
            token = session.activate()
            try:
                with restart_numbering(int(rec.get("attempt") or 1)):
                    value = await pipeline.fn(led.codec.loads(rec["input"]), session)
                outcome = self._outcome_ok(value)
            except ApprovalPending:
                await session.afinish(RunStatus.WAITING)
            except FencedOutError:
                if await session.afinish(RunStatus.RUNNING):
                    await q.aenqueue(entry.run_id, "drain")
            except Exception as exc:
                if _is_outage(exc):
                    raise _Outage(str(exc)) from exc
                fields, delay = self._failure_fields(pipeline, rec, exc)
                if await q.awrite(entry.run_id, session.fence, fields):
                    if delay is not None:
                        await q.adelay(entry.run_id, int((time.time() + delay) * 1000))
                    await session.afinish(RunStatus.FAILED, error=exc)
                    if delay is None:
                        await q.aretire(entry.run_id)
            else:
                if await q.awrite(entry.run_id, session.fence, {"outcome": outcome}):
                    await session.afinish(RunStatus.COMPLETED)
                    await q.aretire(entry.run_id)
            finally:
                session.deactivate(token)
                if not session.finished:
                    session.stop_renewing()
            await asyncio.to_thread(self._ack, entry)
        except Exception as e:
            self._not_done(entry, e)

    def _not_done(self, entry: QueueEntry, exc: Exception) -> None:
        # Nothing more can be written: the entry stays pending and comes back (XAUTOCLAIM),
        # and a run left running is recovered once its lease lapses.
        if _is_outage(exc):
            log.warning("worker %s: run %r left for later, Redis unavailable: %s", self.id,
                        entry.run_id, exc)
        else:
            log.exception("worker %s: run %r", self.id, entry.run_id, exc_info=exc)

    # ---- the background duties ------------------------------------------------------------
    def _beat_loop(self) -> None:
        while not self._stopped.wait(self.heartbeat_s):
            for duty in (self._heartbeat, self._reclaim, self._look_after_shards):
                try:
                    duty()
                except Exception as e:  # the heartbeat must outlive any surprise
                    if _is_outage(e):
                        log.warning("worker %s: %s", self.id, e)
                        break
                    log.exception("worker %s: background duty failed", self.id)

    def _heartbeat(self) -> None:
        with self._lock:
            slots = list(self._slots.values())
        self.queue.heartbeat(WorkerInfo(
            id=self.id, host=socket.gethostname(), pid=os.getpid(), app=self.app_name,
            concurrency=self.concurrency,
            state="draining" if self._draining.is_set() else "running",
            started=self.started, beat=int(time.time() * 1000),
            runs=[s.entry.run_id for s in slots]), ttl_ms=int(self.heartbeat_s * 3000) + 1000)
        if slots:
            self.queue.touch(self.id, [s.entry for s in slots])

    def _reclaim(self) -> None:
        if self._draining.is_set():
            return
        with self._lock:
            free = self.concurrency - len(self._slots) - len(self._reclaimed)
        if free <= 0:
            return
        found = self.queue.reclaim(self.id, self.claim_idle_ms, free)
        if found:
            log.info("worker %s: took over %d entries of dead workers", self.id, len(found))
            with self._lock:
                self._reclaimed.extend(found)
                self._lock.notify_all()

    def _look_after_shards(self) -> None:
        if self._draining.is_set():
            return
        ttl = int(self.heartbeat_s * 1000 * 0.9)
        for shard in range(self.queue.shards):
            if self.queue.take_scan(shard, self.id, ttl):
                self.queue.move_due(shard)
                self._look_after(shard)

    def _look_after(self, shard: int) -> None:
        """Queue again each run of the shard that nobody will continue otherwise."""
        ids = self.queue.active_runs(shard)
        if not ids:
            return
        r = self.ledger.redis
        with self.ledger.redis_errors():
            pipe = r.pipeline(transaction=False)
            for rid in ids:
                pipe.hgetall(RunKeys(self.ledger.prefix, rid).run)
            hashes = pipe.execute()
        delayed: set[str] | None = None
        now = int(time.time() * 1000)
        for rid, h in zip(ids, hashes, strict=True):
            if not h:
                continue  # queued, not started yet
            run = RunRecord.from_hash(RunKeys(self.ledger.prefix, rid).run,
                                      {_s(a): _s(b) for a, b in h.items()})
            mark, why = self._needs_wake(run, now)
            if mark and why == "failed":
                delayed = delayed if delayed is not None else self.queue.delayed_runs(shard)
                if rid in delayed:
                    continue
            if mark:
                self._wake(rid, mark, why)

    def _needs_wake(self, run: RunRecord, now: int) -> tuple[str, str]:
        if self.ledger.is_stalled(run, now):
            return f"s:{run.fence}", "recover"
        if run.status == RunStatus.WAITING:
            if any(s.status == StepStatus.WAITING for s in self.ledger.steps(run.run_id)):
                return "", ""
            return f"w:{run.fence}:{run.updated}", "decided"
        if run.status == RunStatus.FAILED:
            # Failed with retries left but not in the backoff set (a worker died in between).
            return f"f:{run.fence}", "failed"
        return "", ""

    def _wake(self, run_id: str, mark: str, why: str) -> None:
        rec = self.queue.app_record(run_id)
        if not rec:
            self.queue.retire(run_id)  # expired or deleted
            return
        if rec.get("wake") == mark or (why == "failed" and rec.get("outcome")):
            return  # already queued for this state of the run
        with self.ledger.redis_errors():
            self.ledger.redis.hset(RunKeys(self.ledger.prefix, run_id).extra("app"), "wake", mark)
        log.info("worker %s: queueing run %r again (%s)", self.id, run_id, why)
        self.queue.enqueue(run_id, why)


def serve(app: App, *, concurrency: int = 4, name: str | None = None,
          app_name: str = "", on_ready: Callable[[Worker], None] | None = None) -> None:
    """Run a worker in this process until SIGTERM or SIGINT (what ``agentledger worker`` does)."""
    worker = Worker(app, concurrency=concurrency, name=name, app_name=app_name)
    if on_ready is not None:
        on_ready(worker)
    worker.run()
