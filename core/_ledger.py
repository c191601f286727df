"""``Ledger``: the store of runs and steps on Redis, with sync and asyncio twins."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from . import _otel
from ._codec import Codec, json_bytes
from ._connect import ConnectSettings
from ._errors import (
    ApprovalPending,
    CorruptRecordError,
    LedgerError,
    PayloadTooLargeError,
    RunBusyError,
    StepRejected,
    UnknownSchemaVersionError,
)
from ._hotpath import DURABILITY_LEVELS
from ._keys import RunKeys, runs_index
from ._lease import LeaseRenewer
from ._records import (
    SCHEMA_VERSION,
    Decision,
    InDoubtPolicy,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    parse_step_meta,
)
from ._replyoff import wait_until_gone
from ._session import RunSession
from ._store import NOT_MADE, Read, RedisStore, _s

__all__ = ["Ledger", "PendingApproval"]



def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


class PendingApproval(StepRecord):
    """A step waiting for a person, with its run id and request payload decoded."""

    run_id: str
    payload: Any = None


class Ledger(RedisStore):
    """Runs and their steps in Redis.

    Build one with :meth:`from_url` (``redis://``, ``rediss://``, ``unix://``,
    ``redis[s]+cluster://``, ``redis[s]+sentinel://``; no URL and no ``AGENTLEDGER_URL``: the
    embedded Redis of the nearest ``.agentledger/``, see ``from_url``) or hand it a redis-py
    client (the pool stays yours to close). One ``Ledger`` serves threads and event loops.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster | None = None,
        *,
        url: str | None = None,
        prefix: str = "agentledger",
        codec: Codec | None = None,
        lease_ms: int = 15_000,
        completed_ttl_s: float | None = 7 * 24 * 3600,
        max_payload_bytes: int = 8 * 1024 * 1024,
        in_doubt: InDoubtPolicy | str = InDoubtPolicy.RERUN,
        on_mismatch: str = "raise",
        redis_retries: int = 10,
        connect_timeout_s: float | None = None,
        socket_timeout_s: float | None = None,
        allow_evicting_redis: bool = False,
        replicas: int = 0,
        replica_timeout_ms: int = 1000,
        durability: str = "sync",
        max_unacked_records: int = 256,
        max_unacked_bytes: int = 1 << 20,
    ) -> None:
        """
        client: a redis-py ``Redis`` or ``RedisCluster`` (yours to close), or give ``url``.
        prefix: the first part of every key, so that several ledgers share one Redis.
        codec: the allow-list of types values come back as; adapters extend it.
        lease_ms: how long a run's lease lasts without renewal (renewed every third of it);
            a crashed process's run is taken over after this (at once on the same host).
        completed_ttl_s: the TTL set on a run's keys when it ends; None keeps them.
        max_payload_bytes: the largest outcome, approval request or decision recorded
            (encoded JSON); larger is PayloadTooLargeError.
        in_doubt: the default policy for a step that started and recorded no outcome.
        on_mismatch: 'raise' NonDeterminismError when a replayed call differs from the
            recorded one, or 'replay' the recorded result anyway.
        redis_retries: retries (with backoff) before a call fails closed with
            LedgerUnavailableError; all of a call's tries end within half the lease.
        connect_timeout_s, socket_timeout_s: per-attempt timeouts of the clients built from a
            url (default: a tenth of the lease, at least 1 s to read and 0.5 s to connect), so a hung Redis fails the
            step closed before the lease lets another process take the run over. A client
            passed in keeps its own timeouts.
        allow_evicting_redis: accept a Redis whose maxmemory-policy is allkeys-* (it may
            evict live step records, and a lost record re-runs a side effect); refused by
            default with RedisConfigError.
        replicas, replica_timeout_ms: durability "replicated": after each record, wait
            (``WAIT``) until this many replicas have it, so a failover loses nothing
            acknowledged; fewer within the timeout fails the call closed with
            LedgerUnavailableError. 0 (default): replication is asynchronous. A standalone
            Redis with replicas, or a Redis Cluster (the record and its WAIT go to the master
            owning the run's slot).
        durability: 'sync' (default): every step record is acknowledged before the call
            returns. 'async': records whose loss a re-run repairs (LLM outcomes, claims and
            outcomes of 'rerun' steps) are sent without waiting, and acknowledged at the next
            barrier: before a 'fail'/'ask' step's body, an approval, the run's end,
            ``RunSession.barrier()``, and past ``max_unacked_records``/``max_unacked_bytes``.
            'exit': as 'async' for step records. What each survives: docs/durability.md.
        """
        if lease_ms < 100:
            raise ValueError("lease_ms must be at least 100")
        settings = ConnectSettings.for_lease(int(lease_ms), redis_retries, connect_timeout_s,
                                             socket_timeout_s)
        super().__init__(client, url, prefix, settings, allow_evicting_redis)
        self.require_replicas(replicas, replica_timeout_ms)
        if on_mismatch not in ("raise", "replay"):
            raise ValueError("on_mismatch must be 'raise' or 'replay'")
        self.codec = codec or Codec()
        self.lease_ms = int(lease_ms)
        self.completed_ttl_s = completed_ttl_s
        self.max_payload_bytes = int(max_payload_bytes)
        self.in_doubt = InDoubtPolicy(in_doubt)
        if durability not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, not {durability!r}")
        if max_unacked_records < 1 or max_unacked_bytes < 1:
            raise ValueError("max_unacked_records and max_unacked_bytes must be >= 1")
        self.durability = durability
        self.max_unacked_records = int(max_unacked_records)
        self.max_unacked_bytes = int(max_unacked_bytes)
        self.on_mismatch = on_mismatch
        # Whether the step connections may switch replies off and name themselves (the ACL
        # may deny CLIENT REPLY / SETNAME): asked once, at the first record sent unacknowledged.
        self._replies_off: bool | None = None
        self._names_denied = False
        self._renewer = LeaseRenewer(self)

    @classmethod
    def from_url(cls, url: str | None = None, *, prefix: str = "agentledger", **options: Any) -> Ledger:
        """A ledger on ``url``; ``None`` reads ``AGENTLEDGER_URL``, and if that is unset too,
        starts (or joins) the embedded Redis of the ledger folder: ``AGENTLEDGER_HOME``, else
        the nearest ``.agentledger/`` in the working directory or its parents, else a new
        ``./.agentledger/``."""
        url = url or os.environ.get("AGENTLEDGER_URL") or None
        if url is None:
            from ._embedded import embedded_url

            url = embedded_url()
        return cls(url=url, prefix=prefix, **options)

    # ---- runs -----------------------------------------------------------------------------
    def _owner(self) -> str:
        # os.urandom, not uuid4: an app or test that seeds or mocks uuid4 must not see its ids
        # shifted by the ledger's draws.
        return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"

    def _acquire_args(self, run_id: str, kind: str, force: bool, lapsed: str
                      ) -> tuple[list[str], list[Any]]:
        k = self.keys(run_id)
        return [k.run, k.steps, k.keyset], [self._owner(), self.lease_ms, "1" if force else "0",
                                            kind, run_id, "1", lapsed]

    def _await_owner_gone(self, owner: str, run_id: str) -> None:
        """Before taking a run over from a dead or lapsed owner: wait (at most a lease) until
        Redis has read and applied everything that owner's step connection sent."""
        k = self.keys(run_id)

        def list_clients() -> list[dict[str, Any]]:
            if self.cluster:  # the node serving the run's slot
                cluster = cast(RedisCluster, self.redis)
                node = cluster.get_node_from_key(k.run)  # type: ignore[no-untyped-call]
                return cast(list[dict[str, Any]], cluster.client_list(target_nodes=node))
            return cast(list[dict[str, Any]], self.redis.client_list())

        with self.redis_errors():  # a denied CLIENT LIST is a warning (wait_until_gone)
            wait_until_gone(list_clients, owner, self.lease_ms / 1000, run_id)

    def _busy_owner_is_dead(self, owner: str) -> bool:
        # Same host and its pid is gone: the lease belongs to a crashed process of this
        # machine, so waiting out the lease would only delay the restart.
        host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == os.getpid():
            return False
        return not _process_alive(pid)

    def open_run(self, run_id: str, *, kind: str = "", on_busy: str = "wait",
                 wait_timeout_s: float | None = None, read: Read | None = None) -> RunSession:
        """Take the run's lease and load its recorded steps (one round trip); the caller
        must :meth:`RunSession.finish` it. ``on_busy``: 'wait' for a live owner's lease to
        expire (at most ``wait_timeout_s``), 'fail' at once, or 'takeover' (fence it out).
        ``read``: a registered script run in the same round trip, once the lease is taken
        (an adapter's first read of the run's state): :meth:`RunSession.prefetched`."""
        deadline = time.monotonic() + (wait_timeout_s if wait_timeout_s is not None
                                       else 2 * self.lease_ms / 1000)
        force = on_busy == "takeover"
        lapsed = ""
        self._check_read(read)
        self.check_server()
        reading = read
        while True:
            keys, args = self._acquire_args(run_id, kind, force, lapsed)
            reply, read_reply = self._read_too(
                self.script_and_index("acquire", keys, args, run_id, read=reading), reading)
            session = self._after_acquire(run_id, kind, args[0], reply, on_busy, deadline)
            if session is not None:
                session.prefetch(reading, read_reply)
                session.start_renewing()
                return session
            owner = _s(reply[1])
            reading = read  # made again only where the next try is expected to take the lease
            if _s(reply[0]) == "LAPSED":
                self._await_owner_gone(owner, run_id)
                lapsed = owner
                continue
            force = self._busy_owner_is_dead(owner)
            if force:
                self._await_owner_gone(owner, run_id)
            else:
                reading = None  # waiting out a live lease: the first get_tuple reads
                time.sleep(min(0.2, max(0.01, reply[2] / 1000)))

    async def aopen_run(self, run_id: str, *, kind: str = "", on_busy: str = "wait",
                        wait_timeout_s: float | None = None, read: Read | None = None
                        ) -> RunSession:
        deadline = time.monotonic() + (wait_timeout_s if wait_timeout_s is not None
                                       else 2 * self.lease_ms / 1000)
        force = on_busy == "takeover"
        lapsed = ""
        self._check_read(read)
        await self.acheck_server()
        reading = read
        while True:
            keys, args = self._acquire_args(run_id, kind, force, lapsed)
            reply, read_reply = self._read_too(
                await self.ascript_and_index("acquire", keys, args, run_id, read=reading),
                reading)
            session = self._after_acquire(run_id, kind, args[0], reply, on_busy, deadline)
            if session is not None:
                session.prefetch(reading, read_reply)
                session._hot.opened_async = True  # its records may be sent from asyncio unread
                session.start_renewing()
                return session
            owner = _s(reply[1])
            reading = read
            if _s(reply[0]) == "LAPSED":
                await asyncio.to_thread(self._await_owner_gone, owner, run_id)
                lapsed = owner
                continue
            force = self._busy_owner_is_dead(owner)
            if force:
                await asyncio.to_thread(self._await_owner_gone, owner, run_id)
            else:
                reading = None
                await asyncio.sleep(min(0.2, max(0.01, reply[2] / 1000)))

    def _check_read(self, read: Read | None) -> None:
        if read is not None and read[0] not in self._scripts:
            raise ValueError(f"open_run(read=...): no script named {read[0]!r} is registered "
                             "with this ledger (Ledger.register_scripts)")

    @staticmethod
    def _read_too(reply: Any, read: Read | None) -> tuple[Any, Any]:
        return reply if read is not None else (reply, NOT_MADE)

    def _after_acquire(self, run_id: str, kind: str, owner: str, reply: list[Any],
                       on_busy: str, deadline: float) -> RunSession | None:
        tag = _s(reply[0])
        if tag == "VERSION":
            raise UnknownSchemaVersionError(self.keys(run_id).run, _s(reply[1]), SCHEMA_VERSION)
        if tag == "LAPSED":
            return None
        if tag == "BUSY":
            if on_busy == "fail" or time.monotonic() > deadline:
                raise RunBusyError(run_id, _s(reply[1]), int(reply[2]))
            return None
        return RunSession(self, run_id, owner=owner, fence=int(reply[1]), steps=reply[3], kind=kind,
                          prior_status=_s(reply[4]) if len(reply) > 4 else "")

    @contextmanager
    def run(self, run_id: str, *, kind: str = "", on_busy: str = "wait",
            wait_timeout_s: float | None = None) -> Iterator[RunSession]:
        """Run the block as run ``run_id``: steps inside are durable. Leaving normally marks
        the run completed; an exception marks it failed; :class:`ApprovalPending` marks it
        waiting (and propagates, so the caller knows the run stopped for a person)."""
        session = self.open_run(run_id, kind=kind, on_busy=on_busy, wait_timeout_s=wait_timeout_s)
        token = session.activate()
        try:
            yield session
        except ApprovalPending:
            session.finish(RunStatus.WAITING)
            raise
        except BaseException as e:
            session.finish(RunStatus.FAILED, error=e)
            raise
        else:
            session.finish(RunStatus.COMPLETED)
        finally:
            session.deactivate(token)

    @asynccontextmanager
    async def arun(self, run_id: str, *, kind: str = "", on_busy: str = "wait",
                   wait_timeout_s: float | None = None) -> AsyncIterator[RunSession]:
        session = await self.aopen_run(run_id, kind=kind, on_busy=on_busy,
                                       wait_timeout_s=wait_timeout_s)
        token = session.activate()
        try:
            yield session
        except ApprovalPending:
            await session.afinish(RunStatus.WAITING)
            raise
        except BaseException as e:
            await session.afinish(RunStatus.FAILED, error=e)
            raise
        else:
            await session.afinish(RunStatus.COMPLETED)
        finally:
            session.deactivate(token)

    # ---- reading --------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None:
        k = self.keys(run_id)
        with self.redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(k.run)
            pipe.pttl(k.run)
            h, ttl = pipe.execute()
        return self._run_record(k, h, ttl)

    async def aget_run(self, run_id: str) -> RunRecord | None:
        k = self.keys(run_id)
        with self.redis_errors():
            pipe = self._async()[0].pipeline(transaction=False)
            pipe.hgetall(k.run)
            pipe.pttl(k.run)
            h, ttl = await pipe.execute()
        return self._run_record(k, h, ttl)

    @staticmethod
    def _run_record(k: RunKeys, h: dict[bytes, bytes], ttl: int) -> RunRecord | None:
        if not h:
            return None
        return RunRecord.from_hash(k.run, {_s(a): _s(b) for a, b in h.items()}, ttl)

    def list_runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        """Runs, newest update first; ``status`` may be a :class:`RunStatus` or 'stalled'
        (running, but its lease expired: its process died)."""
        with self.redis_errors():
            ids = [_s(x) for x in cast(list[bytes], self.redis.zrevrange(runs_index(self.prefix), 0, -1))]
            pipe = self.redis.pipeline(transaction=False)
            for rid in ids:
                k = RunKeys(self.prefix, rid)
                pipe.hgetall(k.run)
                pipe.pttl(k.run)
            replies = pipe.execute() if ids else []
        return self._filter_runs(ids, replies, status, limit)

    async def alist_runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        client = self._async()[0]
        with self.redis_errors():
            ids = [_s(x) for x in await client.zrevrange(runs_index(self.prefix), 0, -1)]
            pipe = client.pipeline(transaction=False)
            for rid in ids:
                k = RunKeys(self.prefix, rid)
                pipe.hgetall(k.run)
                pipe.pttl(k.run)
            replies = await pipe.execute() if ids else []
        return self._filter_runs(ids, replies, status, limit)

    def _filter_runs(self, ids: list[str], replies: list[Any], status: str | None,
                     limit: int) -> list[RunRecord]:
        now = int(time.time() * 1000)
        out: list[RunRecord] = []
        for i, rid in enumerate(ids):
            rec = self._run_record(RunKeys(self.prefix, rid), replies[2 * i], replies[2 * i + 1])
            if rec is None:
                continue  # expired; `gc` drops it from the index
            if status == "stalled":
                if not self.is_stalled(rec, now):
                    continue
            elif status is not None and rec.status != status:
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    def is_stalled(self, run: RunRecord, now_ms: int | None = None) -> bool:
        """Running, but nobody is executing it: its lease expired, or its owner was a process
        of this host that is gone (a crash)."""
        if run.status != RunStatus.RUNNING:
            return False
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return run.lease_until < now_ms or self._busy_owner_is_dead(run.owner)

    def recover(self, resume: Callable[[RunRecord], object], *, kind: str | None = None) -> list[str]:
        """Call ``resume(run)`` for every stalled run (of ``kind``), which should start the
        run's pipeline again with the same run id; return the run ids resumed. Safe to run
        from several workers at once: the run's lease admits one executor, and the others
        replay."""
        done = []
        for run in self.list_runs(status="stalled", limit=100_000):
            if kind is None or run.kind == kind:
                resume(run)
                done.append(run.run_id)
        return done

    async def arecover(self, resume: Callable[[RunRecord], Awaitable[object]], *,
                       kind: str | None = None) -> list[str]:
        done = []
        for run in await self.alist_runs(status="stalled", limit=100_000):
            if kind is None or run.kind == kind:
                await resume(run)
                done.append(run.run_id)
        return done

    def steps(self, run_id: str, scope: str | None = None) -> list[StepRecord]:
        """The run's step records in the order they started (one round trip). With
        ``scope``, only the steps in that scope and below."""
        k = self.keys(run_id)
        with self.redis_errors():
            h = cast(dict[bytes, bytes], self.redis.hgetall(k.steps))
        return self._step_records(k, h, scope)

    async def asteps(self, run_id: str, scope: str | None = None) -> list[StepRecord]:
        k = self.keys(run_id)
        with self.redis_errors():
            h = await cast(Awaitable[dict[bytes, bytes]], self._async()[0].hgetall(k.steps))
        return self._step_records(k, h, scope)

    @staticmethod
    def _step_records(k: RunKeys, h: dict[bytes, bytes], scope: str | None) -> list[StepRecord]:
        fields = {_s(a): b for a, b in h.items()}
        out = []
        for f, raw in fields.items():
            if not f.startswith("m:"):
                continue
            name = f[2:]
            meta = parse_step_meta(f"{k.steps} {f}", raw)
            if scope is not None and not (meta.scope == scope or meta.scope.startswith(scope + "/")):
                continue
            outcome = fields.get("r:" + name)
            conflict = fields.get("c:" + name)
            request = fields.get("a:" + name)
            replays = fields.get("p:" + name)
            out.append(StepRecord(**meta.model_dump(), outcome=_s(outcome) if outcome else None,
                                  conflict=_s(conflict) if conflict else None,
                                  request=_s(request) if request else None,
                                  replays=int(replays) if replays else 0))
        out.sort(key=lambda r: r.seq)
        return out

    def pending_approvals(self, run_id: str | None = None) -> list[PendingApproval]:
        """Steps waiting for a person: approvals, and in-doubt steps of stopped runs. Runs
        that crashed right after recording an approval (stalled) count too."""
        if run_id:
            run = self.get_run(run_id)
            runs = [run] if run is not None else []
        else:
            runs = [r for r in self.list_runs(limit=100_000)
                    if r.status in (RunStatus.WAITING, RunStatus.FAILED) or self.is_stalled(r)]
        return [p for r in runs for p in self._pending(r, self.steps(r.run_id))]

    async def apending_approvals(self, run_id: str | None = None) -> list[PendingApproval]:
        if run_id:
            run = await self.aget_run(run_id)
            runs = [run] if run is not None else []
        else:
            runs = [r for r in await self.alist_runs(limit=100_000)
                    if r.status in (RunStatus.WAITING, RunStatus.FAILED) or self.is_stalled(r)]
        return [p for r in runs for p in self._pending(r, await self.asteps(r.run_id))]

    def _pending(self, run: RunRecord, steps: list[StepRecord]) -> list[PendingApproval]:
        held = bool(run.owner) and run.lease_until > int(time.time() * 1000)
        out = []
        for s in steps:
            in_doubt = s.status == StepStatus.RUNNING and not held
            if s.status != StepStatus.WAITING and not in_doubt:
                continue
            payload = None
            if s.request:
                try:
                    payload = self.codec.loads(s.request, f"{self.keys(run.run_id).steps} a:{s.key}")
                except (LedgerError, ValueError):
                    payload = s.request
            out.append(PendingApproval(**s.model_dump(), run_id=run.run_id, payload=payload))
        return out

    # ---- decisions ------------------------------------------------------------------------
    def _decide_args(self, run_id: str, step: str | None, approved: bool, by: str | None,
                     note: str | None, payload: Any) -> tuple[list[str], list[Any]]:
        k = self.keys(run_id)
        d = Decision(approved=approved, by=by, note=note, payload=payload,
                     at=int(time.time() * 1000))
        approval_outcome = self._decision_bytes(
            {"v": SCHEMA_VERSION, "ok": True, "value": self.codec.encode(d)})
        # An in-doubt step: approve = run it again (same idempotency key), approve with a
        # payload = it did happen and this is its result, reject = it fails.
        if not approved:
            doubt_status = "failed"
            rejected = StepRejected(f"rejected by {by or 'a person'}" + (f": {note}" if note else ""))
            doubt_outcome = self._decision_bytes(
                {"v": SCHEMA_VERSION, "ok": False, "error": self.codec.encode_error(rejected)})
        elif payload is not None:
            doubt_status = "completed"
            doubt_outcome = self._decision_bytes(
                {"v": SCHEMA_VERSION, "ok": True, "value": self.codec.encode(payload)})
        else:
            doubt_status, doubt_outcome = "retry", b""
        return [k.run, k.steps], [step or "", "completed", approval_outcome, doubt_status,
                                  doubt_outcome]

    def _decision_bytes(self, outcome: dict[str, Any]) -> bytes:
        raw = json_bytes(outcome)
        if len(raw) > self.max_payload_bytes:
            raise PayloadTooLargeError("the decision", len(raw), self.max_payload_bytes)
        return raw

    def _after_decide(self, run_id: str, reply: list[Any]) -> str:
        tag = _s(reply[0])
        if tag == "OK":
            return _s(reply[1])
        if tag == "AMBIGUOUS":
            n = int(reply[1])
            raise LedgerError(f"run {run_id!r} has {n} waiting steps; name the step"
                              if n else f"run {run_id!r} has no step waiting for a decision")
        if tag == "NOSTEP":
            raise LedgerError(f"run {run_id!r} has no step {_s(reply[1])!r}")
        if tag == "NOTWAITING":
            raise LedgerError(f"step {_s(reply[1])!r} of run {run_id!r} is {_s(reply[2])}, "
                              "not waiting for a decision")
        raise CorruptRecordError(self.keys(run_id).steps, f"step metadata: {_s(reply[1])[:80]!r}")

    def decide(self, run_id: str, step: str | None = None, *, approved: bool = True,
               by: str | None = None, note: str | None = None, payload: Any = None) -> str:
        """Record a person's decision on a waiting step (the run's only one if ``step`` is
        None) and return the step key. The run continues from there when started again."""
        keys, args = self._decide_args(run_id, step, approved, by, note, payload)
        key = self._after_decide(run_id, self.script("decide", keys, args))
        if _otel.active is not None:
            _otel.active.decided(self, run_id, key, approved, by)
        return key

    async def adecide(self, run_id: str, step: str | None = None, *, approved: bool = True,
                      by: str | None = None, note: str | None = None, payload: Any = None) -> str:
        keys, args = self._decide_args(run_id, step, approved, by, note, payload)
        key = self._after_decide(run_id, await self.ascript("decide", keys, args))
        if _otel.active is not None:
            _otel.active.decided(self, run_id, key, approved, by)
        return key

    # ---- housekeeping ---------------------------------------------------------------------
    def track_key(self, run_id: str, key: str) -> None:
        """Expire and delete ``key`` (an adapter's own, in the run's slot) with the run."""
        with self.redis_errors():
            self.redis.sadd(self.keys(run_id).keyset, key)

    async def atrack_key(self, run_id: str, key: str) -> None:
        with self.redis_errors():
            await cast(Awaitable[int], self._async()[0].sadd(self.keys(run_id).keyset, key))

    def delete_run(self, run_id: str, *, force: bool = False) -> int:
        """Delete everything the run wrote; return the number of keys removed. A run whose
        lease is live is refused (its holder would carry on): ``force`` deletes it anyway,
        and its holder is fenced out, since fencing tokens never restart."""
        k = self.keys(run_id)
        reply = self.script("delete", [k.run, k.steps, k.keyset], ["1" if force else "0"])
        n = self._after_delete(run_id, reply)
        with self.redis_errors():
            self.redis.zrem(runs_index(self.prefix), run_id)
        return n

    async def adelete_run(self, run_id: str, *, force: bool = False) -> int:
        k = self.keys(run_id)
        reply = await self.ascript("delete", [k.run, k.steps, k.keyset], ["1" if force else "0"])
        n = self._after_delete(run_id, reply)
        with self.redis_errors():
            await self._async()[0].zrem(runs_index(self.prefix), run_id)
        return n

    @staticmethod
    def _after_delete(run_id: str, reply: list[Any]) -> int:
        if _s(reply[0]) == "LIVE":
            raise RunBusyError(run_id, _s(reply[1]), int(reply[2]),
                               hint="delete it once it ends, or pass force=True (--force): "
                                    "its holder is then fenced out")
        return int(reply[1])

    def gc(self) -> int:
        """Drop index entries of runs whose keys expired; return how many."""
        with self.redis_errors():
            ids = [_s(x) for x in cast(list[bytes], self.redis.zrange(runs_index(self.prefix), 0, -1))]
            pipe = self.redis.pipeline(transaction=False)
            for rid in ids:
                pipe.exists(RunKeys(self.prefix, rid).run)
            gone = [rid for rid, e in zip(ids, pipe.execute() if ids else [], strict=True) if not e]
            if gone:
                self.redis.zrem(runs_index(self.prefix), *gone)
        return len(gone)

    async def agc(self) -> int:
        client = self._async()[0]
        with self.redis_errors():
            ids = [_s(x) for x in await client.zrange(runs_index(self.prefix), 0, -1)]
            pipe = client.pipeline(transaction=False)
            for rid in ids:
                pipe.exists(RunKeys(self.prefix, rid).run)
            res = await pipe.execute() if ids else []
            gone = [rid for rid, e in zip(ids, res, strict=True) if not e]
            if gone:
                await client.zrem(runs_index(self.prefix), *gone)
        return len(gone)
