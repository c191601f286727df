"""``RunSession``: one process's hold on one run, and the step protocol adapters call.

A session takes the run's lease (bumping its fencing token) and loads every recorded step of the
run in the same round trip. While it holds the lease, nobody else writes to the run, so that
snapshot is authoritative: a step found completed in it replays with no round trip, a step absent
from it is live. A live step costs one round trip to record its intent (skipped for calls with no
side effect, such as LLM calls) and one to record its outcome.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import _context, _otel
from ._codec import fingerprint_and_text, json_bytes
from ._connect import ledger_error
from ._errors import (
    ApprovalPending,
    CorruptRecordError,
    FencedOutError,
    InDoubtStepError,
    LedgerError,
    LedgerUnavailableError,
    NonDeterminismError,
    PayloadTooLargeError,
    ThreadScopeError,
    UnrecordableValueError,
    UnsupportedTypeError,
)
from ._faults import crash_point
from ._hotpath import NOT_HERE, StepConnection
from ._keys import RunKeys, runs_index
from ._records import (
    SCHEMA_VERSION,
    Decision,
    InDoubtPolicy,
    RunStatus,
    StepKind,
    StepMeta,
    StepStatus,
    parse_outcome,
    parse_step_meta,
)
from ._store import NOT_MADE
from ._suggest import command

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["NOT_READ", "RunSession", "StepCall", "StepStart", "is_control_flow"]

log = logging.getLogger("agentledger")
T = TypeVar("T")
NOT_READ: Any = object()  # RunSession.prefetched: no read made with the open fits; make it
_PREVIEW = 160


def _s(b: bytes | str) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


@dataclass(slots=True)
class StepCall:
    """What an adapter is about to call."""

    kind: StepKind | str
    name: str
    inputs: Any = None  # normalised inputs: the fingerprint and the preview come from them
    scope: str | None = None  # None: the current scope (agentledger.scope / the adapter's)
    call_id: str | None = None  # a replayed id from the framework (a tool call id): the key
    preview: str | None = None
    policy: InDoubtPolicy | str | None = None  # None: the ledger's default
    intent: bool = True  # False: record only the outcome (no side effect to guard)


@dataclass(slots=True)
class StepStart:
    """A step begun: either replayed (its outcome is known) or live (the caller runs it)."""

    key: str
    idempotency_key: str
    replayed: bool
    attempt: int = 1
    fingerprint: str = ""
    preview: str = ""
    call: StepCall | None = None
    scope: str = ""
    outcome: dict[str, Any] | None = field(default=None, repr=False)
    t0: float = 0.0
    span: Any = field(default=None, repr=False)  # its OpenTelemetry span, when tracing is on
    # Numbered from a thread that did not enter its scope: its number may follow thread timing.
    foreign_thread: bool = False


class RunSession:
    """The lease on one run held by this process. Made by ``Ledger.open_run``/``run``."""

    def __init__(self, ledger: Ledger, run_id: str, *, owner: str, fence: int,
                 steps: list[Any], kind: str = "", prior_status: str = "") -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.prior_status = prior_status  # the run's status before this session took it
        self.kind = kind
        self.owner = owner
        self.fence = fence
        self.keys = RunKeys(ledger.prefix, run_id)
        self.codec = ledger.codec
        self.fenced = False
        # Set by a draining worker: the next step boundary (before a claim, never inside a
        # record) raises FencedOutError, so the step in flight ends recorded, not in doubt.
        self.stop_requested = False
        self.finished = False
        self.ttl_s = ledger.completed_ttl_s  # TTL set on the run's keys when it ends
        self.executed = 0  # steps executed live by this session
        self.replayed = 0  # steps answered from records
        self._replayed_keys: list[str] = []
        self._meta: dict[str, bytes] = {}
        self._outcomes: dict[str, bytes] = {}
        # durability "async": a model's answer was sent since the last acknowledged claim
        self._answer_unacknowledged = False
        for i in range(0, len(steps), 2):
            f = _s(steps[i])
            if f.startswith("m:"):
                self._meta[f[2:]] = steps[i + 1]
            elif f.startswith("r:"):
                self._outcomes[f[2:]] = steps[i + 1]
        # No step was recorded before this session took the lease: a fresh run.
        self.is_new = not self._meta
        self._counters: dict[str, int] = {}
        self._root: tuple[str, int] | None = None  # (scope, thread) where it was activated
        self._lock = threading.Lock()
        self._fence_arg = str(fence)
        self._hot = StepConnection(ledger, self.keys.run, base=self.keys.base, fence=fence,
                                   owner=owner)
        self._ik_seed = f"{ledger.prefix}\0{run_id}\0"
        # The read made in the open's round trip (open_run(read=...)): (read, its reply).
        self._prefetched: tuple[tuple[str, list[str], list[Any]], Any] | None = None
        self.otel: Any = None  # the run's span and attached contexts, when tracing is on
        if _otel.active is not None:
            _otel.active.run_opened(self)

    # ---- the read made with the open -------------------------------------------------------
    def prefetch(self, read: tuple[str, list[str], list[Any]] | None, reply: Any) -> None:
        if read is not None and reply is not NOT_MADE and not isinstance(reply, Exception):
            self._prefetched = (read, reply)

    def prefetched(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """The reply of the read ``open_run(read=...)`` made in the open's round trip, if it is
        this read (script, keys, arguments) and this session has sent nothing since; at most
        once. Else :data:`NOT_READ`: make the read. Served, it is what the read returned right
        after the lease was taken: a write by another process in between (an unfenced
        adapter write: a thread deleted or updated elsewhere) may or may not be in it, as it may
        or may not be in a read made now."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is None or self._hot.used or prefetched[0] != (name, keys, args):
            return NOT_READ
        return prefetched[1]

    # ---- lifecycle ------------------------------------------------------------------------
    def start_renewing(self) -> None:
        self.ledger._renewer.add(self)

    def stop_renewing(self) -> None:
        """Stop renewing the lease (the run is taken over once it expires)."""
        self.ledger._renewer.remove(self)

    def activate(self) -> Token[RunSession | None]:
        """Make this the session that steps in this context record into."""
        _context.note_active(self, 1)
        self._root = (_context._scope.get(), threading.get_ident())
        return _context._session.set(self)

    def deactivate(self, token: Token[RunSession | None]) -> None:
        _context.note_active(self, -1)
        _context._session.reset(token)

    def _finish_args(self, status: RunStatus | str, error: BaseException | None
                     ) -> tuple[list[str], list[Any]]:
        self.stop_renewing()
        self.finished = True
        if (str(status) == RunStatus.FAILED and self.prior_status == RunStatus.COMPLETED
                and isinstance(error, NonDeterminismError)):
            # A second opener asked something else of a completed run: its own mistake. The
            # run's recorded history is whole; it stays completed.
            status, error = RunStatus.COMPLETED, None
        if _otel.active is not None:
            _otel.active.run_finished(self, str(status), error)
        ttl = self.ttl_s
        err = "" if error is None else f"{type(error).__name__}: {_text_of(error)}"[:1000]
        return ([self.keys.run, self.keys.steps, self.keys.keyset],
                [self._fence_arg, str(RunStatus(status)), err, int(ttl * 1000) if ttl else 0,
                 *self._replayed_keys])

    def _index_command(self) -> list[tuple[Any, ...]]:
        # The runs index bumped with the finish (same connection: not on a cluster, where
        # last_call declines and script_and_index writes it to its own slot).
        return [("ZADD", runs_index(self.ledger.prefix), int(time.time() * 1000), self.run_id)]

    def _finished(self, replies: list[Any], error: BaseException | None) -> bool:
        """The finish record's reply (and the index's) read with the barrier (last_call)."""
        refused = next((r for r in replies if isinstance(r, Exception)), None)
        if refused is None:
            return bool(replies[0])
        if error is None:
            raise ledger_error(refused, self.ledger.url, "the finish script")
        log.error("agentledger: could not record that run %r failed: %s", self.run_id,
                  _text_of(refused))
        return False

    def finish(self, status: RunStatus | str, error: BaseException | None = None) -> bool:
        """Record how the run ended (or that it waits) and release the lease. False if this
        process had been fenced out."""
        keys, args = self._finish_args(status, error)
        try:
            # The end of a run: every record acknowledged first; where nothing among them is
            # judged here, in the same round trip as the finish (applied only after them all).
            replies = self._hot.last_call("finish", keys, args, self._index_command())
            if replies is NOT_HERE:
                self._hot.barrier()
        except LedgerError as e:
            return self._unfinished(e, error)
        finally:
            self._hot.close()
        if replies is not NOT_HERE:
            return self._finished(replies, error)
        try:
            return bool(self.ledger.script_and_index("finish", keys, args, self.run_id,
                                                     self._replay_counts()))
        except LedgerError:
            if error is None:
                raise
            log.exception("agentledger: could not record that run %r failed", self.run_id)
            return False

    def _unfinished(self, barrier_error: LedgerError, error: BaseException | None) -> bool:
        # Records sent at durability "async" were not all acknowledged: the run is left
        # unfinished (taken over and resumed like a crashed one), never marked ended.
        if error is None:
            raise barrier_error
        log.error("agentledger: run %r stopped (%s) and its records were not all "
                      "acknowledged (%s); it stays open to be resumed", self.run_id, _text_of(error),
                  _text_of(barrier_error))
        return False

    def use_durability(self, level: str | None) -> None:
        """Record this run at ``level`` ('sync' | 'async' | 'exit') instead of the ledger's;
        None keeps the ledger's. Adapters call it right after opening the run."""
        if level is not None:
            self._hot.set_level(level)

    def join_durability(self, level: str | None) -> bool | None:
        """An adapter given its own ``durability=`` that joins this run (opened elsewhere: a
        worker's pipeline) records its calls at that level, not the opener's; returns what
        :meth:`leave_durability` puts back when the adapter is done (None: nothing changed)."""
        return None if level is None else self._hot.swap_level(level)

    def leave_durability(self, before: bool | None) -> None:
        if before is not None:
            self._hot.restore_level(before)

    def barrier(self) -> None:
        """Wait until every record this session sent is acknowledged (durability "async");
        raise the first error among them. Adapters call it where control goes back to the
        user."""
        self._hot.barrier()

    async def abarrier(self) -> None:
        await self._hot.abarrier()

    # ---- an adapter's own writes, in order with the step records ---------------------------
    @property
    def pipelined(self) -> bool:
        """Records are written without waiting for their replies (durability 'async' or
        'exit'); False: each is acknowledged before the call returns."""
        return self._hot.pipelined

    def send_script(self, name: str, keys: list[str], args: list[Any],
                    on_reply: Callable[[Any], None], *, defer: bool = False,
                    expect: str | None = None, hold: bool = False) -> None:
        """Send a script registered with ``Ledger.register_scripts`` on this run's step
        connection, after the records sent before it. At 'async'/'exit', or with ``defer`` at
        any level, it is written without waiting and ``on_reply`` runs at the next barrier
        (its exception is raised there); at 'sync' without ``defer``, it is acknowledged now.
        A record sent without waiting or held that ``on_reply`` (or Redis, per ``expect``)
        refuses stops the session: its caller went on as if it were recorded. Only a record
        deferred at 'sync', whose caller calls :meth:`barrier` itself, may have its refusal
        handled there. ``expect``, ``hold``: see :meth:`StepConnection.send` (``hold``: kept in
        this process until the next record or barrier, and sent with it)."""
        self._hot.send(name, keys, args, on_reply, defer, expect=expect, hold=hold)

    async def asend_script(self, name: str, keys: list[str], args: list[Any],
                           on_reply: Callable[[Any], None], *, defer: bool = False,
                           expect: str | None = None, hold: bool = False) -> None:
        await self._hot.asend(name, keys, args, on_reply, defer, expect=expect, hold=hold)

    def call_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script and return its reply; for a read that must see this run's
        writes, call :meth:`barrier` first."""
        return self._hot.call(name, keys, args)

    async def acall_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._hot.acall(name, keys, args)

    def _replay_counts(self) -> list[tuple[str, ...]]:
        # Counted inside the finish script, which a retry cannot apply twice.
        return []

    async def afinish(self, status: RunStatus | str, error: BaseException | None = None) -> bool:
        keys, args = self._finish_args(status, error)
        try:
            replies = await self._hot.alast_call("finish", keys, args, self._index_command())
            if replies is NOT_HERE:
                await self._hot.abarrier()
        except LedgerError as e:
            return self._unfinished(e, error)
        finally:
            await self._hot.aclose()
        if replies is not NOT_HERE:
            return self._finished(replies, error)
        try:
            return bool(await self.ledger.ascript_and_index("finish", keys, args, self.run_id,
                                                            self._replay_counts()))
        except LedgerError:
            if error is None:
                raise
            log.exception("agentledger: could not record that run %r failed", self.run_id)
            return False

    # ---- keys -----------------------------------------------------------------------------
    def step_key(self, call: StepCall, scope: str | None = None) -> str:
        """Scope + kind:name + occurrence (or the framework's call id)."""
        if scope is None:
            scope = call.scope if call.scope is not None else _context._scope.get()
        base = f"{scope}/{call.kind}:{call.name}" if scope else f"{call.kind}:{call.name}"
        if call.call_id:
            return f"{base}@{call.call_id}"
        numbering = _context._numbering.get()
        counters, attempt = (self._counters, 1) if numbering is None else numbering.current()
        with self._lock:
            n = counters.get(base, 0) + 1
            counters[base] = n
        key = f"{base}#{n}"
        return key if attempt <= 1 else self._attempt_key(key, attempt)

    def _attempt_key(self, key: str, attempt: int) -> str:
        """In a retry attempt, the step's key is that of its newest earlier try, unless that
        try failed: then the step runs again under ``<key>.r<attempt>``."""
        for a in range(attempt - 1, 0, -1):
            tried = key if a == 1 else f"{key}.r{a}"
            meta = self.recorded(tried)
            if meta is not None:
                return f"{key}.r{attempt}" if meta.status == StepStatus.FAILED else tried
        return key

    def idempotency_key(self, step_key: str) -> str:
        digest = hashlib.sha256((self._ik_seed + step_key).encode()).hexdigest()
        return f"al-{digest[:40]}"

    def recorded(self, step_key: str) -> StepMeta | None:
        """The step's metadata as loaded or written by this session, if any."""
        raw = self._meta.get(step_key)
        return None if raw is None else parse_step_meta(f"{self.keys.steps} m:{step_key}", raw)

    # ---- adapters' own state -----------------------------------------------------------------
    def _blob_args(self, name: str, value: str | bytes | None) -> tuple[list[str], list[Any]]:
        key = self.keys.extra(name)
        return [self.keys.run, self.keys.keyset, key], [self._fence_arg, value or ""]

    def _after_put(self, name: str, ok: Any) -> None:
        if not ok:
            self.fenced = True
            raise FencedOutError(f"run {self.run_id!r} was taken over; {name!r} not written")

    def put_blob(self, name: str, value: str | bytes | None) -> None:
        """Store an adapter's own state under the run (a framework's saved run state, say),
        under this lease's fencing token, expired and deleted with the run. None deletes it."""
        self._hot.barrier()  # written on another connection: the records before it first
        self._prefetched = None
        self._after_put(name, self.ledger.script("put_blob", *self._blob_args(name, value)))

    async def aput_blob(self, name: str, value: str | bytes | None) -> None:
        await self._hot.abarrier()
        self._prefetched = None
        self._after_put(name, await self.ledger.ascript("put_blob", *self._blob_args(name, value)))

    def get_blob(self, name: str) -> bytes | None:
        with self.ledger.redis_errors():
            return cast(bytes | None, self.ledger.redis.get(self.keys.extra(name)))

    async def aget_blob(self, name: str) -> bytes | None:
        with self.ledger.redis_errors():
            return cast(bytes | None, await self.ledger.async_client().get(self.keys.extra(name)))

    # ---- the step protocol ----------------------------------------------------------------
    def _plan(self, call: StepCall) -> tuple[StepStart, list[Any] | None]:
        """Decide from the snapshot: replay, claim (one round trip), or run without an
        intent record. Returns the start and the claim script's arguments (None: no trip)."""
        if self.fenced:
            raise FencedOutError(f"run {self.run_id!r} was taken over; this process stops")
        if self.stop_requested:
            raise FencedOutError(f"run {self.run_id!r}: its worker is stopping; another "
                                 "continues it")
        scope = call.scope if call.scope is not None else _context._scope.get()
        key = self.step_key(call, scope)
        fp, text = fingerprint_and_text(self.codec, call.inputs)
        preview = call.preview if call.preview is not None else _preview(call.inputs, text)
        start = StepStart(key=key, idempotency_key=self.idempotency_key(key), replayed=False,
                          fingerprint=fp, preview=preview, call=call, scope=scope,
                          foreign_thread=self._numbered_elsewhere(call, scope))
        raw = self._meta.get(key)
        meta = None
        if raw is not None:
            meta = parse_step_meta(f"{self.keys.steps} m:{key}", raw)
            self._check_fingerprint(meta, start)
            if meta.status in (StepStatus.COMPLETED, StepStatus.FAILED):
                return self._replay(start, meta), None
            if meta.status == StepStatus.WAITING and call.kind != StepKind.APPROVAL:
                raise ApprovalPending(self.run_id, key, meta.preview)
        if meta is None and not call.intent:
            return start, None
        policy = InDoubtPolicy(call.policy) if call.policy else self.ledger.in_doubt
        mode = "approval" if call.kind == StepKind.APPROVAL else "claim"
        request = self._request_bytes(key, call.inputs) if mode == "approval" else b""
        new_meta = self._new_meta(start, policy)
        return start, [[self.keys.run, self.keys.steps],
                       [key, self._fence_arg, new_meta, mode, str(policy), request]]

    def _request_bytes(self, key: str, payload: Any) -> bytes:
        raw = self.codec.dumps_bytes(payload)
        if len(raw) > self.ledger.max_payload_bytes:
            raise PayloadTooLargeError(f"the request payload of approval {key!r}", len(raw),
                                       self.ledger.max_payload_bytes)
        return raw

    def _new_meta(self, start: StepStart, policy: InDoubtPolicy) -> str:
        call = start.call
        assert call is not None
        return json.dumps({"v": SCHEMA_VERSION, "key": start.key, "kind": str(call.kind),
                           "name": call.name, "scope": start.scope, "fp": start.fingerprint,
                           "ik": start.idempotency_key, "policy": str(policy),
                           "preview": start.preview, "executor": self.owner},
                          separators=(",", ":"), ensure_ascii=False)

    def _replay(self, start: StepStart, meta: StepMeta) -> StepStart:
        raw = self._outcomes.get(start.key)
        where = f"{self.keys.steps} r:{start.key}"
        if raw is None:
            raise CorruptRecordError(where, "step is recorded as ended but has no outcome")
        start.outcome = parse_outcome(where, raw)
        start.replayed = True
        start.attempt = meta.attempts
        self.replayed += 1
        self._replayed_keys.append(start.key)
        return start

    def _vanished(self, reply: list[Any]) -> None:
        if not _s(reply[1]):  # no fencing token at all: the run record itself is gone
            raise CorruptRecordError(self.keys.run, "the run record vanished while this process "
                                     "held its lease (deleted, evicted or flushed); stopping")

    def _numbered_elsewhere(self, call: StepCall, scope: str) -> bool:
        """True when an occurrence number was handed out in a thread other than the one that
        entered the scope (``agentledger.scope``, ``in_thread``) or activated the run in it:
        threads racing in one scope take numbers in timing order."""
        if call.call_id or call.scope is not None:
            return False
        entered = _context._scope_owner.get()
        if entered is None or entered[0] != scope:
            entered = self._root
        return entered is not None and entered[0] == scope and entered[1] != threading.get_ident()

    def _check_fingerprint(self, meta: StepMeta, start: StepStart) -> None:
        if not meta.fp or meta.fp == start.fingerprint:
            return
        recorded, new = meta.preview or meta.fp, start.preview or start.fingerprint
        if start.foreign_thread:
            # Never replay another call's result to a step whose number may be another
            # thread's, not even under on_mismatch='replay'.
            raise ThreadScopeError(start.key, recorded, new)
        if self.ledger.on_mismatch == "raise":
            raise NonDeterminismError(start.key, recorded, new)

    def _after_claim(self, start: StepStart, reply: list[Any]) -> StepStart:
        tag = _s(reply[0])
        key = start.key
        where = f"{self.keys.steps} m:{key}"
        if tag == "CLAIMED":
            self._meta[key] = reply[1]
            start.attempt = int(reply[2])
            return start
        if tag == "FENCED":
            self.fenced = True
            self._vanished(reply)
            raise FencedOutError(f"run {self.run_id!r} was taken over (fence {_s(reply[1])} > "
                                 f"{self.fence}); this process may not write to it")
        if tag == "CORRUPT":
            parse_step_meta(where, reply[1])  # raises the precise error
            raise CorruptRecordError(where, "the Lua script could not read the metadata")
        meta = parse_step_meta(where, reply[1])
        self._meta[key] = reply[1]
        if tag == "DONE":
            self._outcomes[key] = reply[2]
            self._check_fingerprint(meta, start)
            return self._replay(start, meta)
        if _otel.active is not None and tag in ("WAITING", "INDOUBT"):
            _otel.active.step_stopped(self, start, meta)
        if tag == "WAITING":
            raise ApprovalPending(self.run_id, key, meta.preview)
        if tag == "INDOUBT":
            raise InDoubtStepError(key, meta.attempts, meta.ik)
        raise LedgerError(f"unexpected reply {tag!r} from the claim script")

    # ---- durability "async": records sent now, acknowledged at the next barrier -------------
    def _claim_unacknowledged(self, start: StepStart, args: list[Any]) -> bool:
        """Whether the claim may go unacknowledged: a new 'rerun' step (lost, it runs again
        with the same idempotency key, as an in-doubt step does). Sets the state the reply
        would have set."""
        _keys, (key, _fence, _meta, mode, policy, _req) = args
        if not (self._hot.pipelined and mode == "claim" and policy == InDoubtPolicy.RERUN
                and key not in self._meta):
            return False
        if self._answer_unacknowledged and self._hot.unacknowledged:
            # A model's answer decided this call (which tool, its arguments, in some
            # frameworks its key: the call id in the answer). Lost, the model is asked again
            # and may decide otherwise, while this effect already happened: the answer is
            # acknowledged (with this claim) before the body runs.
            self._answer_unacknowledged = False
            return False
        start.attempt = 1
        self._meta[key] = self._expected_meta(_meta, start, StepStatus.RUNNING)
        return True

    def _on_claim(self, start: StepStart) -> Callable[[Any], None]:
        def on_reply(reply: Any) -> None:
            self._after_claim(start, reply)
        return on_reply

    def _outcome_unacknowledged(self, start: StepStart, args: list[Any]) -> bool:
        call = start.call
        if not self._hot.pipelined or call is None:
            return False
        policy = InDoubtPolicy(call.policy) if call.policy else self.ledger.in_doubt
        if call.intent and policy != InDoubtPolicy.RERUN:
            return False  # a lost outcome would put a 'fail'/'ask' step in doubt
        base = args[1][4] or self._new_meta(start, InDoubtPolicy.RERUN)
        self._meta[start.key] = self._expected_meta(base, start, args[1][2])
        self._outcomes[start.key] = args[1][3]
        self.executed += 1
        if call.kind == StepKind.LLM:
            self._answer_unacknowledged = True
        return True

    def _on_complete(self, start: StepStart, args: list[Any]) -> Callable[[Any], None]:
        # Counted as executed when sent (the reply is read only if it is a refusal).
        return lambda reply: self._after_complete(start, args, reply, counted=True)

    def _expected_meta(self, new_meta: str, start: StepStart, status: str) -> bytes:
        """The step's metadata as the script will write it, until its reply is read (the
        fields the session reads back; ``new_meta`` is :meth:`_new_meta`'s object)."""
        return (f'{new_meta[:-1]},"status":"{status}","attempts":{start.attempt},'
                f'"fence":{self.fence}}}').encode()

    def begin(self, call: StepCall) -> StepStart:
        """Replay the step from its record, or claim it (intent) so that the caller runs it
        and then calls :meth:`record`."""
        start, args = self._plan(call)
        if args is not None:
            crash_point("before_claim")
            if self._claim_unacknowledged(start, args):
                self._hot.send("claim", args[0], args[1], self._on_claim(start),
                               expect="CLAIMED")
            else:
                start = self._after_claim(start, self._hot.call("claim", *args))
            crash_point("after_claim")
        start.t0 = time.perf_counter()
        if _otel.active is not None:
            _otel.active.step_begun(self, start)
        return start

    async def abegin(self, call: StepCall) -> StepStart:
        start, args = self._plan(call)
        if args is not None:
            crash_point("before_claim")
            if self._claim_unacknowledged(start, args):
                await self._hot.asend("claim", args[0], args[1], self._on_claim(start),
                                      expect="CLAIMED")
            else:
                start = self._after_claim(start, await self._hot.acall("claim", *args))
            crash_point("after_claim")
        start.t0 = time.perf_counter()
        if _otel.active is not None:
            _otel.active.step_begun(self, start)
        return start

    def _outcome_args(self, start: StepStart, value: Any, error: BaseException | None
                      ) -> tuple[list[Any], BaseException | None]:
        """The complete script's arguments, and the error to raise instead of returning the
        value when the value cannot be recorded (that failure is what gets recorded)."""
        raised: BaseException | None = None
        limit = self.ledger.max_payload_bytes
        try:
            body = ({"v": SCHEMA_VERSION, "ok": True, "value": self.codec.encode(value)}
                    if error is None else
                    {"v": SCHEMA_VERSION, "ok": False, "error": self.codec.encode_error(error)})
            raw = self.codec.value_bytes(body, "value") if error is None else json_bytes(body)
            if len(raw) > limit:
                raise PayloadTooLargeError(f"the outcome of step {start.key!r}", len(raw), limit)
        except (UnsupportedTypeError, PayloadTooLargeError, UnrecordableValueError) as e:
            raised = e
            raw = self._failure_bytes(e)
        except Exception as e:  # anything else that stops the value being written as JSON
            raised = UnrecordableValueError(
                f"the outcome of step {start.key!r} cannot be recorded: "
                f"{type(e).__name__}: {_text_of(e)}")
            raw = self._failure_bytes(raised)
        return self._complete_args(start, "completed" if error is None and raised is None
                                   else "failed", raw), raised

    def _failure_bytes(self, exc: BaseException) -> bytes:
        """A failure outcome for ``exc``, within the payload limit whatever its text."""
        err = self.codec.encode_error(exc)
        raw = json_bytes({"v": SCHEMA_VERSION, "ok": False, "error": err})
        if len(raw) > self.ledger.max_payload_bytes:
            err = {**err, "message": err["message"][:2000], "args": None}
            raw = json_bytes({"v": SCHEMA_VERSION, "ok": False, "error": err})
        return raw

    def _complete_args(self, start: StepStart, status: str, raw: bytes) -> list[Any]:
        call = start.call
        assert call is not None
        meta = "" if call.intent else self._new_meta(start, InDoubtPolicy.RERUN)
        return [[self.keys.run, self.keys.steps], [start.key, self._fence_arg, status, raw, meta]]

    def _after_complete(self, start: StepStart, args: list[Any], reply: list[Any],
                        counted: bool = False) -> None:
        tag = _s(reply[0])
        if tag == "OK":
            self._meta[start.key] = reply[1]
            self._outcomes[start.key] = args[1][3]
            self.executed += 0 if counted else 1
            return
        if tag == "MISSING":
            raise CorruptRecordError(f"{self.keys.steps} m:{start.key}",
                                     "the step's intent record vanished while it ran (deleted, "
                                     "evicted or flushed); its outcome was not recorded")
        if tag == "FENCED":
            self.fenced = True
            self._vanished(reply)
            raise FencedOutError(f"run {self.run_id!r} was taken over while step "
                                 f"{start.key!r} ran; its outcome was not recorded here")
        if tag == "CONFLICT":
            self.fenced = True
            self._vanished(reply)
            raise FencedOutError(
                f"run {self.run_id!r} was decided or taken over while step {start.key!r} ran; "
                "its outcome was kept as a conflict beside the step's record "
                f"(`{command('show', positional=(self.run_id,), prefix=self.ledger.prefix)}`), "
                "and this process stops")
        if tag == "CORRUPT":
            raise CorruptRecordError(f"{self.keys.steps} m:{start.key}", "unreadable metadata")
        # DONE: another attempt recorded first; keep its outcome, the one the run will see.
        self._meta[start.key] = reply[1]
        self._outcomes[start.key] = reply[2]

    def _suspend_args(self, start: StepStart) -> list[Any]:
        return [[self.keys.run, self.keys.steps], [start.key, self._fence_arg]]

    def record(self, start: StepStart, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome of a live step: its value, or the error it raised. A value
        that cannot be recorded is recorded as the failure saying why, which is raised.

        The ledger's own control flow is no outcome and is not recorded: an
        :class:`ApprovalPending` from inside the body suspends the step (it runs again after
        the decision), and after a lost lease or Redis, cancellation, KeyboardInterrupt or
        SystemExit the step stays in doubt."""
        if error is not None and is_control_flow(error):
            if isinstance(error, ApprovalPending) and (start.call is None or start.call.intent):
                self._hot.call("suspend", *self._suspend_args(start))
            if start.span is not None and _otel.active is not None:
                _otel.active.step_recorded(self, start, error, 0.0)
            return
        args, raised = self._outcome_args(start, value, error)
        crash_point("before_record")
        hooks = _otel.active
        t = time.perf_counter() if hooks is not None else 0.0
        if self._outcome_unacknowledged(start, args):
            self._hot.send("complete", args[0], args[1], self._on_complete(start, args),
                           expect="OK")
        else:
            self._after_complete(start, args, self._hot.call("complete", *args))
        crash_point("after_record")
        if hooks is not None:
            hooks.step_recorded(self, start, raised or error, time.perf_counter() - t)
        if raised is not None:
            raise raised

    async def arecord(self, start: StepStart, value: Any = None,
                      error: BaseException | None = None) -> None:
        if error is not None and is_control_flow(error):
            if isinstance(error, ApprovalPending) and (start.call is None or start.call.intent):
                await self._hot.acall("suspend", *self._suspend_args(start))
            if start.span is not None and _otel.active is not None:
                _otel.active.step_recorded(self, start, error, 0.0)
            return
        args, raised = self._outcome_args(start, value, error)
        crash_point("before_record")
        hooks = _otel.active
        t = time.perf_counter() if hooks is not None else 0.0
        if self._outcome_unacknowledged(start, args):
            await self._hot.asend("complete", args[0], args[1], self._on_complete(start, args),
                                  expect="OK")
        else:
            self._after_complete(start, args, await self._hot.acall("complete", *args))
        crash_point("after_record")
        if hooks is not None:
            hooks.step_recorded(self, start, raised or error, time.perf_counter() - t)
        if raised is not None:
            raise raised

    def result(self, start: StepStart) -> Any:
        """The replayed value of a step, or raise its recorded error."""
        outcome = start.outcome
        assert outcome is not None, "result() is for replayed steps"
        where = f"{self.keys.steps} r:{start.key}"
        try:
            if outcome["ok"]:
                return self.codec.decode(outcome["value"], where)
            err_data = outcome["error"]
        except UnsupportedTypeError as e:
            raise UnsupportedTypeError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptRecordError(where, f"outcome does not decode ({e})") from None
        if not isinstance(err_data, dict):
            raise CorruptRecordError(where, "recorded error is not an object")
        raise self.codec.decode_error(err_data)

    @contextmanager
    def executing(self, start: StepStart) -> Iterator[StepStart]:
        """Mark ``start`` as the step being executed in this context while an adapter drives
        its body itself: ``current_idempotency_key()`` answers, and steps called inside are
        part of its body."""
        token = self.enter_step(start)
        try:
            yield start
        finally:
            self.exit_step(token)

    @staticmethod
    def enter_step(start: StepStart) -> Token[StepStart | None]:
        """:meth:`executing` for frameworks whose hooks split a call in two (before/after)."""
        return _context._step.set(start)

    @staticmethod
    def exit_step(token: Token[StepStart | None]) -> None:
        _context._step.reset(token)

    # ---- whole calls ----------------------------------------------------------------------
    def call(self, call: StepCall, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` as a durable step (or replay it)."""
        start = self.begin(call)
        if start.replayed:
            return self.result(start)  # type: ignore[no-any-return]
        token = _context._step.set(start)
        hooks = _otel.active if start.span is not None else None
        entered = hooks.step_entered(start) if hooks is not None else None
        try:
            value = fn(*args, **kwargs)
        except Exception as e:
            self.record(start, error=e)
            raise
        finally:
            _context._step.reset(token)
            if hooks is not None:
                hooks.step_left(entered)
        self.record(start, value)
        return value

    async def acall(self, call: StepCall, fn: Callable[..., Awaitable[T]], *args: Any,
                    **kwargs: Any) -> T:
        start = await self.abegin(call)
        if start.replayed:
            return self.result(start)  # type: ignore[no-any-return]
        token = _context._step.set(start)
        hooks = _otel.active if start.span is not None else None
        entered = hooks.step_entered(start) if hooks is not None else None
        try:
            value = await fn(*args, **kwargs)
        except Exception as e:
            await self.arecord(start, error=e)
            raise
        finally:
            _context._step.reset(token)
            if hooks is not None:
                hooks.step_left(entered)
        await self.arecord(start, value)
        return value

    # ---- approvals ------------------------------------------------------------------------
    def _approval_call(self, name: str, payload: Any, scope: str | None) -> StepCall:
        return StepCall(kind=StepKind.APPROVAL, name=name, inputs=payload, scope=scope)

    def _decision(self, start: StepStart) -> Decision:
        if not start.replayed:
            raise ApprovalPending(self.run_id, start.key, start.preview)
        value = self.result(start)
        if isinstance(value, Decision):
            return value
        return Decision.model_validate(value)

    def approval(self, name: str, payload: Any = None, *, scope: str | None = None) -> Decision:
        """The person's decision on this approval step; if there is none yet, record the
        request and raise :class:`ApprovalPending` (the run stops, holding nothing)."""
        return self._decision(self.begin(self._approval_call(name, payload, scope)))

    async def aapproval(self, name: str, payload: Any = None, *, scope: str | None = None
                        ) -> Decision:
        return self._decision(await self.abegin(self._approval_call(name, payload, scope)))


def _preview(inputs: Any, text: str) -> str:
    if inputs is None:
        return ""
    if isinstance(inputs, str):
        text = inputs
    text = text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…"
    # For people, and written as UTF-8: a lone surrogate becomes '?'.
    return text.encode("utf-8", "replace").decode()


def is_control_flow(exc: BaseException) -> bool:
    """True for what stops a step without being its outcome: the ledger's own signals
    (waiting for a person, a lost lease, Redis unreachable) and everything that is not an
    ``Exception`` (cancellation, KeyboardInterrupt, SystemExit)."""
    return not isinstance(exc, Exception) or isinstance(
        exc, ApprovalPending | FencedOutError | LedgerUnavailableError)


def _text_of(e: BaseException) -> str:
    try:
        return str(e)[:1000]
    except Exception:
        return "<its text could not be read>"
