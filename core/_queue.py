"""The run queue on Redis Streams, and what workers share about the runs they serve.

A queue entry only says "someone should try run X"; the run's lease decides who executes it.
Entries go to one of ``shards`` streams, each under a hash tag of its own (``{q0}``, ``{q1}``,
...), so a Redis Cluster spreads the queue over its masters. Every shard has:

- ``<prefix>:{q<i>}:runs``    stream read by the consumer group ``workers`` (XREADGROUP; a dead
  worker's unacknowledged entries are taken over with XAUTOCLAIM);
- ``<prefix>:{q<i>}:active``  zset of the shard's runs submitted and not yet ended for good, the
  runs the workers look after (stalled, or waiting with their approvals decided);
- ``<prefix>:{q<i>}:delayed`` zset of runs waiting out a retry backoff, scored by when they are due.

A run's own app record ``<prefix>:{<run>}:app`` (a hash in the run's slot, expired with the
run) holds the pipeline name, the input and, once the run ended for good, its outcome. Workers
announce themselves in ``<prefix>:workers`` (zset by heartbeat) and ``<prefix>:worker:<id>``.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import redis

from ._errors import LedgerError, LedgerUnavailableError
from ._keys import RunKeys
from ._store import RedisStore, _s

__all__ = ["GROUP", "QueueEntry", "RunQueue", "WorkerInfo", "app_key", "is_outage"]

GROUP = "workers"
DEFAULT_SHARDS = 8

# KEYS[1] app hash, KEYS[2] the run's key set
# ARGV[1] pipeline, ARGV[2] input (codec JSON), ARGV[3] now ms
# -> {'NEW'} | {'EXISTS', pipeline, outcome}
SUBMIT = """
local have = redis.call('HGET', KEYS[1], 'pipeline')
if have then return {'EXISTS', have, redis.call('HGET', KEYS[1], 'outcome') or ''} end
redis.call('HSET', KEYS[1], 'v', '1', 'pipeline', ARGV[1], 'input', ARGV[2], 'submitted', ARGV[3],
           'failures', 0, 'attempt', 1, 'outcome', '')
redis.call('SADD', KEYS[2], KEYS[1])
return {'NEW'}
"""

# KEYS[1] run hash, KEYS[2] app hash; ARGV[1] fence, ARGV[2..] field, value, ...
# -> 1 | 0 (fenced out: another process holds the run)
APP_WRITE = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS[1] delayed zset, KEYS[2] stream; ARGV[1] how many at most
# -> how many runs were due and moved to the stream
MOVE_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, run in ipairs(due) do
  redis.call('ZREM', KEYS[1], run)
  redis.call('XADD', KEYS[2], '*', 'run', run, 'why', 'backoff')
end
return #due
"""


_OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
            redis.exceptions.TryAgainError, redis.exceptions.RedisClusterException,
            LedgerUnavailableError)


def is_outage(exc: BaseException) -> bool:
    """Redis (or a cluster node) was unreachable or failing over: not the pipeline's fault,
    and worth trying again later."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, _OUTAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def app_key(prefix: str, run_id: str) -> str:
    """The hash of a submitted run: pipeline, input, retry counters, final outcome."""
    return RunKeys(prefix, run_id).extra("app")


@dataclass(frozen=True, slots=True)
class QueueEntry:
    shard: int
    entry_id: str
    run_id: str
    why: str


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself in its heartbeat."""

    id: str
    host: str
    pid: int
    app: str
    concurrency: int
    state: str  # running | draining
    started: int
    beat: int
    runs: list[str]


class RunQueue:
    """The sharded stream queue under a store's prefix (sync and asyncio forms)."""

    def __init__(self, store: RedisStore, shards: int = DEFAULT_SHARDS) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.store = store
        self.prefix = store.prefix
        self.shards = shards
        self._submit = store.redis.register_script(SUBMIT)
        self._app_write = store.redis.register_script(APP_WRITE)
        self._move_due = store.redis.register_script(MOVE_DUE)
        self._groups_ready = False
        self._next_shard = 0

    # ---- keys -----------------------------------------------------------------------------
    def _tag(self, shard: int) -> str:
        return f"{self.prefix}:{{q{shard}}}"

    def stream(self, shard: int) -> str:
        return f"{self._tag(shard)}:runs"

    def active(self, shard: int) -> str:
        return f"{self._tag(shard)}:active"

    def delayed(self, shard: int) -> str:
        return f"{self._tag(shard)}:delayed"

    def scan_lock(self, shard: int) -> str:
        return f"{self._tag(shard)}:scan"

    def shard_of(self, run_id: str) -> int:
        return zlib.crc32(run_id.encode()) % self.shards

    @property
    def workers_index(self) -> str:
        return f"{self.prefix}:workers"

    def worker_key(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    # ---- submitting -----------------------------------------------------------------------
    def _submit_args(self, run_id: str, pipeline: str, input_json: str
                     ) -> tuple[list[str], list[Any]]:
        k = RunKeys(self.prefix, run_id)
        return [app_key(self.prefix, run_id), k.keyset], [pipeline, input_json,
                                                          int(time.time() * 1000)]

    @staticmethod
    def _check_submit(run_id: str, pipeline: str, reply: list[Any]) -> bool:
        """True when the run should be queued (new, or submitted before and not ended)."""
        if _s(reply[0]) == "NEW":
            return True
        have = _s(reply[1])
        if have != pipeline:
            raise LedgerError(f"run {run_id!r} was submitted to pipeline {have!r}, not {pipeline!r}")
        # Submitted again: queue it again unless it ended, so that a submit cut short between
        # storing the input and queueing it is completed by trying again.
        return not _s(reply[2])

    def submit(self, run_id: str, pipeline: str, input_json: str) -> bool:
        """Store the run's input and queue it; False if it had already ended."""
        keys, args = self._submit_args(run_id, pipeline, input_json)
        if self.store.wait_replicas:
            reply = self.store.eval_replicated(self._submit, keys, args, "the run's input")
        else:
            with self.store.redis_errors():
                reply = self._submit(keys=keys, args=args)
        if not self._check_submit(run_id, pipeline, reply):
            return False
        self.enqueue(run_id, "submit")
        return True

    async def asubmit(self, run_id: str, pipeline: str, input_json: str) -> bool:
        keys, args = self._submit_args(run_id, pipeline, input_json)
        if self.store.wait_replicas:
            reply = await self.store.aeval_replicated(self._submit.sha, SUBMIT, keys, args,
                                                      "the run's input")
        else:
            with self.store.redis_errors():
                reply = await self._aeval(SUBMIT, self._submit.sha, keys, args)
        if not self._check_submit(run_id, pipeline, cast(list[Any], reply)):
            return False
        await self.aenqueue(run_id, "submit")
        return True

    async def _aeval(self, script: str, sha: str, keys: list[str], args: list[Any]) -> Any:
        client: Any = self.store.async_client()
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # a new or restarted Redis: load it once
            await client.script_load(script)
            return await client.evalsha(sha, len(keys), *keys, *args)

    def _entry(self, shard: int, run_id: str, why: str) -> list[tuple[Any, ...]]:
        # Sent twice after a failover (a lost reply), an entry is read twice: the run lease
        # makes the second read find the run held or ended.
        return [("XADD", self.stream(shard), "*", "run", run_id, "why", why),
                ("ZADD", self.active(shard), "NX", int(time.time() * 1000), run_id)]

    def enqueue(self, run_id: str, why: str) -> None:
        """Ask a worker to try the run (it stays in the shard's active set until it ends)."""
        shard = self.shard_of(run_id)
        if self.store.wait_replicas:
            self.store.commands_replicated(self.stream(shard), self._entry(shard, run_id, why),
                                           "the queue entry")
            return
        with self.store.redis_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.xadd(self.stream(shard), {"run": run_id, "why": why})
            pipe.zadd(self.active(shard), {run_id: int(time.time() * 1000)}, nx=True)
            pipe.execute()

    async def aenqueue(self, run_id: str, why: str) -> None:
        shard = self.shard_of(run_id)
        if self.store.wait_replicas:
            await self.store.acommands_replicated(
                self.stream(shard), self._entry(shard, run_id, why), "the queue entry")
            return
        with self.store.redis_errors():
            pipe = self.store.async_client().pipeline(transaction=False)
            pipe.xadd(self.stream(shard), {"run": run_id, "why": why})
            pipe.zadd(self.active(shard), {run_id: int(time.time() * 1000)}, nx=True)
            await pipe.execute()

    # ---- the app record of a run ----------------------------------------------------------
    def app_record(self, run_id: str) -> dict[str, str]:
        with self.store.redis_errors():
            h = cast(dict[bytes, bytes], self.store.redis.hgetall(app_key(self.prefix, run_id)))
        return {_s(a): _s(b) for a, b in h.items()}

    async def aapp_record(self, run_id: str) -> dict[str, str]:
        with self.store.redis_errors():
            h = await cast(Awaitable[dict[bytes, bytes]],
                           self.store.async_client().hgetall(app_key(self.prefix, run_id)))
        return {_s(a): _s(b) for a, b in h.items()}

    def outcome(self, run_id: str) -> str | None:
        """The run's final outcome (JSON), '' if it has not ended, None if never submitted."""
        with self.store.redis_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            key = app_key(self.prefix, run_id)
            pipe.exists(key)
            pipe.hget(key, "outcome")
            exists, raw = pipe.execute()
        return _s(raw) if exists else None

    async def aoutcome(self, run_id: str) -> str | None:
        with self.store.redis_errors():
            pipe = self.store.async_client().pipeline(transaction=False)
            key = app_key(self.prefix, run_id)
            pipe.exists(key)
            pipe.hget(key, "outcome")
            exists, raw = await pipe.execute()
        return _s(raw) if exists else None

    def _write_args(self, run_id: str, fence: int, fields: dict[str, str | int]
                    ) -> tuple[list[str], list[Any]]:
        flat: list[Any] = [str(fence)]
        for f, v in fields.items():
            flat += [f, v]
        return [RunKeys(self.prefix, run_id).run, app_key(self.prefix, run_id)], flat

    def write(self, run_id: str, fence: int, fields: dict[str, str | int]) -> bool:
        """Update the app record under the run's fencing token; False if fenced out."""
        keys, args = self._write_args(run_id, fence, fields)
        if self.store.wait_replicas:
            return bool(self.store.eval_replicated(self._app_write, keys, args, "the app record"))
        with self.store.redis_errors():
            return bool(self._app_write(keys=keys, args=args))

    async def awrite(self, run_id: str, fence: int, fields: dict[str, str | int]) -> bool:
        keys, args = self._write_args(run_id, fence, fields)
        if self.store.wait_replicas:
            return bool(await self.store.aeval_replicated(self._app_write.sha, APP_WRITE, keys,
                                                          args, "the app record"))
        with self.store.redis_errors():
            return bool(await self._aeval(APP_WRITE, self._app_write.sha, keys, args))

    def reset_for_retry(self, run_id: str) -> None:
        """A person asked for the run again: forget its outcome and its failure count."""
        with self.store.redis_errors():
            self.store.redis.hset(app_key(self.prefix, run_id),
                                  mapping={"outcome": "", "failures": 0})

    def delay(self, run_id: str, due_ms: int) -> None:
        with self.store.redis_errors():
            self.store.redis.zadd(self.delayed(self.shard_of(run_id)), {run_id: due_ms})

    async def adelay(self, run_id: str, due_ms: int) -> None:
        with self.store.redis_errors():
            await self.store.async_client().zadd(self.delayed(self.shard_of(run_id)),
                                                 {run_id: due_ms})

    def retire(self, run_id: str) -> None:
        """The run ended for good: workers stop looking after it."""
        with self.store.redis_errors():
            self.store.redis.zrem(self.active(self.shard_of(run_id)), run_id)

    async def aretire(self, run_id: str) -> None:
        with self.store.redis_errors():
            await self.store.async_client().zrem(self.active(self.shard_of(run_id)), run_id)

    # ---- consuming ------------------------------------------------------------------------
    @staticmethod
    def stored_shards(store: RedisStore) -> int:
        """The shard count the workers of this prefix use (the default before any started)."""
        with store.redis_errors():
            raw = store.redis.get(f"{store.prefix}:queue:shards")
        return int(cast(bytes, raw)) if raw else DEFAULT_SHARDS

    def ensure_groups(self) -> None:
        key = f"{self.prefix}:queue:shards"
        with self.store.redis_errors():
            self.store.redis.set(key, self.shards, nx=True)
            stored = int(cast(bytes, self.store.redis.get(key)))
            if stored != self.shards:
                raise LedgerError(f"{key} says the queue has {stored} shards; this App has "
                                  f"{self.shards}: every App of one prefix needs the same number")
            for shard in range(self.shards):
                try:
                    self.store.redis.xgroup_create(self.stream(shard), GROUP, id="0",
                                                   mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise
        self._groups_ready = True

    def _entries(self, shard: int, raw: list[Any]) -> list[QueueEntry]:
        out = []
        for entry_id, fields in raw:
            if not fields:  # deleted while pending
                continue
            f = {_s(a): _s(b) for a, b in fields.items()}
            out.append(QueueEntry(shard, _s(entry_id), f.get("run", ""), f.get("why", "")))
        return out

    def read(self, consumer: str, count: int, block_ms: int) -> list[QueueEntry]:
        """At most ``count`` new entries for ``consumer``, waiting at most ``block_ms``.

        XREADGROUP's COUNT holds per stream, so the shards are asked one after the other
        (starting where the last read stopped, for fairness) until ``count`` are found. Only
        when all are empty does the worker block on all of them at once (one cross-slot
        command, so not on a cluster, where it sleeps a little instead)."""
        if not self._groups_ready:
            self.ensure_groups()
        r = self.store.redis
        try:
            with self.store.redis_errors():
                out: list[QueueEntry] = []
                for j in range(self.shards):
                    shard = (self._next_shard + j) % self.shards
                    reply = r.xreadgroup(GROUP, consumer, {self.stream(shard): ">"},
                                         count=count - len(out))
                    for _name, raw in cast(list[Any], reply or []):
                        out += self._entries(shard, raw)
                    if len(out) >= count:
                        self._next_shard = (shard + 1) % self.shards
                        return out
                if out or block_ms <= 0:
                    return out
                if self.store.cluster:
                    time.sleep(min(block_ms, 50) / 1000)
                    return []
                reply = r.xreadgroup(GROUP, consumer,
                                     {self.stream(i): ">" for i in range(self.shards)},
                                     count=1, block=block_ms)
                for name, raw in cast(list[Any], reply or []):
                    shard = int(_s(name).rpartition("{q")[2].partition("}")[0])
                    out += self._entries(shard, raw)
                for extra in out[count:]:  # one per stream came: give back what does not fit
                    self.give_back(extra)
                return out[:count]
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):  # the stream was deleted under us: make it again
                self._groups_ready = False
                return []
            raise

    def give_back(self, entry: QueueEntry) -> None:
        """Put an entry read but not worked on back in the queue for any worker."""
        with self.store.redis_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.xadd(self.stream(entry.shard), {"run": entry.run_id, "why": entry.why})
            pipe.xack(self.stream(entry.shard), GROUP, entry.entry_id)
            pipe.xdel(self.stream(entry.shard), entry.entry_id)
            pipe.execute()

    def ack(self, entry: QueueEntry) -> None:
        """Done with the entry: acknowledge and delete it (the stream keeps no history)."""
        with self.store.redis_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.xack(self.stream(entry.shard), GROUP, entry.entry_id)
            pipe.xdel(self.stream(entry.shard), entry.entry_id)
            pipe.execute()

    def touch(self, consumer: str, entries: list[QueueEntry]) -> None:
        """Reset the idle time of entries this worker is still working on, so that nobody
        takes them over as a dead worker's."""
        by_shard: dict[int, list[Any]] = {}
        for e in entries:
            by_shard.setdefault(e.shard, []).append(e.entry_id)
        with self.store.redis_errors():
            for shard, ids in by_shard.items():
                self.store.redis.xclaim(self.stream(shard), GROUP, consumer, 0, ids, justid=True)

    def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[QueueEntry]:
        """Entries read by workers that stopped acknowledging (dead): now ``consumer``'s."""
        out: list[QueueEntry] = []
        with self.store.redis_errors():
            for shard in range(self.shards):
                try:
                    reply = self.store.redis.xautoclaim(self.stream(shard), GROUP, consumer,
                                                        min_idle_ms, "0-0", count=count)
                except redis.ResponseError as e:
                    if "NOGROUP" in str(e):
                        self._groups_ready = False
                        continue
                    raise
                out += self._entries(shard, cast(list[Any], reply)[1])
        return out

    def move_due(self, shard: int, limit: int = 100) -> int:
        with self.store.redis_errors():
            return int(self._move_due(keys=[self.delayed(shard), self.stream(shard)],
                                      args=[limit]))

    def active_runs(self, shard: int, limit: int = 10_000) -> list[str]:
        with self.store.redis_errors():
            return [_s(x) for x in cast(list[bytes],
                                        self.store.redis.zrange(self.active(shard), 0, limit - 1))]

    def delayed_runs(self, shard: int) -> set[str]:
        with self.store.redis_errors():
            return {_s(x) for x in cast(list[bytes],
                                        self.store.redis.zrange(self.delayed(shard), 0, -1))}

    def take_scan(self, shard: int, owner: str, ttl_ms: int) -> bool:
        """One worker at a time looks after a shard's runs, for ``ttl_ms``."""
        with self.store.redis_errors():
            return bool(self.store.redis.set(self.scan_lock(shard), owner, nx=True, px=ttl_ms))

    def backlog(self) -> int:
        """Entries queued and not yet acknowledged, over all shards."""
        n = 0
        with self.store.redis_errors():
            for shard in range(self.shards):
                n += int(cast(int, self.store.redis.xlen(self.stream(shard))))
        return n

    # ---- workers --------------------------------------------------------------------------
    def heartbeat(self, info: WorkerInfo, ttl_ms: int) -> None:
        body = json.dumps({**{f: getattr(info, f) for f in WorkerInfo.__slots__}})
        with self.store.redis_errors():
            self.store.redis.set(self.worker_key(info.id), body, px=ttl_ms)
            self.store.redis.zadd(self.workers_index, {info.id: info.beat})

    def forget_worker(self, worker_id: str) -> None:
        with self.store.redis_errors():
            self.store.redis.delete(self.worker_key(worker_id))
            self.store.redis.zrem(self.workers_index, worker_id)

    def workers(self) -> list[WorkerInfo]:
        """Live workers (their heartbeat has not expired), most recent beat first."""
        r = self.store.redis
        with self.store.redis_errors():
            ids = [_s(x) for x in cast(list[bytes], r.zrevrange(self.workers_index, 0, -1))]
            bodies = [r.get(self.worker_key(i)) for i in ids]
            gone = [i for i, b in zip(ids, bodies, strict=True) if b is None]
            if gone:
                r.zrem(self.workers_index, *gone)
        out = []
        for b in bodies:
            if b is None:
                continue
            try:
                out.append(WorkerInfo(**json.loads(cast(bytes, b))))
            except (ValueError, TypeError):
                continue  # a heartbeat of another version; it expires on its own
        return out
