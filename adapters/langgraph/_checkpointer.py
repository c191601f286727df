"""``DurableCheckpointer``: a LangGraph checkpoint saver on plain Redis (no modules), sync and
async in one class, sharing the agentledger run of the thread (``thread_id`` is the run id).

One Lua script per ``put`` and per ``put_writes``, one per ``get_tuple``; all keys of a thread
carry the thread's hash tag and are registered with the ledger, so ``delete_thread`` (the
ledger's ``delete_run``) removes checkpoints and recorded steps together.
"""

from __future__ import annotations

import builtins
import copy
import importlib
import random
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aredis
from langchain_core.runnables import RunnableConfig
from redis.commands.core import AsyncScript, Script

from agentledger import (
    CorruptRecordError,
    Ledger,
    LedgerError,
    LedgerUnavailableError,
    RunSession,
    _context,
)
from agentledger._faults import crash_point
from agentledger._replyoff import KEEP_UNLESS, no_verdict
from agentledger._session import NOT_READ
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from . import _ckpt_codec as codec
from . import _ckpt_lua as lua
from ._ckpt_admin import ThreadAdmin
from ._ckpt_keys import ThreadKeys, text, thread_keys, thread_of, thread_pattern
from ._ckpt_serde import StrictSerializer

__all__ = ["DurableCheckpointer"]

_SCRIPTS = {"put": lua.PUT, "put_writes": lua.PUT_WRITES, "load": lua.LOAD,
            "load_many": lua.LOAD_MANY, "drop": lua.DROP}
# The same scripts as the ledger knows them, to be sent on a run's step connection.
_RUN_SCRIPTS = {f"langgraph.{n}": _SCRIPTS[n] for n in ("put", "put_writes", "load")}
_US = codec.US
_LOAD_CHUNK = 64
_CACHE_SIZE = 512



@dataclass(slots=True)
class _PutPlan:
    keys: ThreadKeys
    args: list[Any]
    lists: dict[tuple[str, str, str], tuple[str, list[bytes]]]
    fields: list[str]
    result: RunnableConfig
    # Set when Redis answered NOBASE, by whichever caller read the reply (at 'sync' another
    # thread's call may read the batch that carries this put): the put checks it itself.
    gone: LedgerError | None = None


class DurableCheckpointer(ThreadAdmin, BaseCheckpointSaver[str]):
    """A LangGraph checkpointer whose threads are agentledger runs.

    ``DurableCheckpointer(ledger)`` or ``DurableCheckpointer.from_url(url)`` (no URL and no
    ``AGENTLEDGER_URL``: the embedded Redis). ``ttl`` (seconds) expires a thread — its
    checkpoints and its recorded steps — that long after its last checkpoint write. A graph
    run that ends (completed or failed; not one waiting for a person) expires with its
    thread after ``ttl``, or without ``ttl`` after the ledger's ``completed_ttl_s`` (7 days
    by default; ``None`` keeps it).
    Values are read and written by a :class:`StrictSerializer`: LangGraph's msgpack format
    for the types LangGraph's state is made of plus ``allowed_types`` (your pydantic models,
    dataclasses, enums: classes or ``(module, name)`` pairs); any other type is refused with
    an error naming it, so a blob written into Redis cannot make a reader import and call
    anything. A ``serde`` given instead is used as it is (it must not pickle).
    """

    def __init__(self, ledger: Ledger | None = None, *, ttl: float | None = None,
                 serde: SerializerProtocol | None = None,
                 allowed_types: Sequence[type | tuple[str, str]] = ()) -> None:
        if serde is not None and allowed_types:
            raise ValueError("allowed_types applies to the default serializer; with your own "
                             "serde, give it the allow-list (StrictSerializer(allowed_types))")
        super().__init__(serde=codec.check_serde(serde or StrictSerializer(allowed_types)))
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds (or None: the ledger's retention)")
        self._owns_ledger = ledger is None
        self.ledger: Ledger = ledger if ledger is not None else Ledger.from_url()
        if self.ledger.redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("DurableCheckpointer stores bytes: give the Ledger a redis client "
                             "without decode_responses=True")
        self.ttl = ttl
        self._ttl_ms = int(ttl * 1000) if ttl is not None else 0
        self._ttl_arg = str(self._ttl_ms)  # script arguments are text
        self._scripts: dict[str, Script] = {
            n: self.ledger.redis.register_script(s) for n, s in _SCRIPTS.items()}
        self._ascripts: weakref.WeakKeyDictionary[aredis.Redis, dict[str, AsyncScript]] = (
            weakref.WeakKeyDictionary())
        # (thread, ns, channel) -> (blob field, encoded items) of the last list stored, so the
        # next version of an append-only list stores only what was appended.
        self._lists: OrderedDict[tuple[str, str, str], tuple[str, list[bytes]]] = OrderedDict()
        self._list_threads: dict[str, int] = {}  # threads with lists in _lists: how many
        self._lists_lock = threading.Lock()
        self._thread_keys: dict[Any, ThreadKeys] = {}
        self._channel_names: set[str] = set()  # checked for separator bytes already
        self.ledger.register_scripts(_RUN_SCRIPTS)
        _install_call_recording()

    @classmethod
    def from_url(cls, url: str | None = None, *, prefix: str = "agentledger",
                 ttl: float | None = None, serde: SerializerProtocol | None = None,
                 allowed_types: Sequence[type | tuple[str, str]] = (),
                 **ledger_options: Any) -> DurableCheckpointer:
        """A checkpointer on its own :class:`Ledger` (``Ledger.from_url`` rules for ``url``).

        The thread is the run, so unless ``completed_ttl_s`` is given the ledger expires a
        finished run after ``ttl`` too; without ``ttl``, after the ledger's default (7 days).
        """
        if ttl is not None:
            ledger_options.setdefault("completed_ttl_s", ttl)
        saver = cls(Ledger.from_url(url, prefix=prefix, **ledger_options), ttl=ttl, serde=serde,
                    allowed_types=allowed_types)
        saver._owns_ledger = True
        return saver

    def close(self) -> None:
        if self._owns_ledger:
            self.ledger.close()

    async def aclose(self) -> None:
        if self._owns_ledger:
            await self.ledger.aclose()

    def with_allowlist(self, extra_allowlist: Any) -> DurableCheckpointer:
        """A shallow copy that also loads ``extra_allowlist`` ((module, name) pairs): LangGraph
        calls it with the state schema's types when ``LANGGRAPH_STRICT_MSGPACK=true``."""
        if not isinstance(self.serde, StrictSerializer):
            return cast(DurableCheckpointer, super().with_allowlist(extra_allowlist))
        extra = {tuple(k) for k in extra_allowlist if len(k) == 2} - self.serde.allowed
        if not extra:
            return self
        clone = copy.copy(self)
        clone.serde = self.serde.allowing(extra)
        return clone

    # ---- plumbing ---------------------------------------------------------------------------
    def _keys(self, thread_id: Any) -> ThreadKeys:
        keys = self._thread_keys.get(thread_id)
        if keys is None:
            keys = thread_keys(self.ledger, thread_id)
            if len(self._thread_keys) >= _CACHE_SIZE:
                self._thread_keys.clear()
            self._thread_keys[thread_id] = keys
        return keys

    def _aclient(self) -> tuple[aredis.Redis, dict[str, AsyncScript]]:
        client = self.ledger.async_client()
        scripts = self._ascripts.get(client)
        if scripts is None:
            scripts = {n: client.register_script(s) for n, s in _SCRIPTS.items()}
            self._ascripts[client] = scripts
        return client, scripts

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise LedgerUnavailableError(f"Redis unreachable during {what}: {e}") from e
        except redis.ResponseError as e:
            raise LedgerError(f"Redis refused {what}: {e}") from e

    def _forget(self, thread_id: str) -> None:
        with self._lists_lock:
            if thread_id in self._list_threads:  # else nothing to scan for
                for k in [k for k in self._lists if k[0] == thread_id]:
                    self._drop_list(k)

    def _drop_list(self, key: tuple[str, str, str]) -> None:  # _lists_lock held
        if self._lists.pop(key, None) is not None:
            left = self._list_threads[key[0]] - 1
            if left:
                self._list_threads[key[0]] = left
            else:
                del self._list_threads[key[0]]

    def _run_of(self, thread_id: Any) -> RunSession | None:
        """The live run of ``thread_id`` in this context: the run a graph invocation opened
        (LangGraph copies the context into the threads and tasks that save checkpoints).
        Checkpoint writes go over its step connection, in order with its step records, and
        are acknowledged as its durability level says (docs/langgraph-checkpointer.md)."""
        session = _context._session.get()
        if (session is None or session.finished or session.fenced
                or session.ledger is not self.ledger or session.run_id != str(thread_id)):
            return None
        return session

    # ---- put ----------------------------------------------------------------------------------
    def _plan_put(self, config: RunnableConfig, checkpoint: Checkpoint,
                  metadata: CheckpointMetadata, new_versions: ChannelVersions,
                  deltas: bool = True) -> _PutPlan:
        conf = config["configurable"]
        keys = self._keys(conf["thread_id"])
        ns = codec.check_name("checkpoint_ns", conf.get("checkpoint_ns", ""))
        cid = codec.check_name("checkpoint id", checkpoint["id"])
        member = f"{ns}{_US}{cid}"
        at = f"{ns}{_US}"
        c = checkpoint.copy()
        values: dict[str, Any] = c.pop("channel_values")  # type: ignore[misc]
        args: list[Any] = []
        lists: dict[tuple[str, str, str], tuple[str, list[bytes]]] = {}
        fields: list[str] = []
        for ch, ver in new_versions.items():
            if ch not in self._channel_names:  # a graph has few channels: check each once
                self._channel_names.add(codec.check_name("channel", ch))
            field = f"{at}{ch}{_US}{ver}"
            base = ""
            if ch not in values:
                blob = codec.encode_blob(codec.EMPTY, b"")
            elif type(values[ch]) is list:
                items = [codec.encode_blob(*codec.dumps(self.serde, v)) for v in values[ch]]
                prev = self._lists.get((keys.thread_id, ns, ch)) if deltas else None
                n = len(prev[1]) if prev else 0
                if prev and prev[0] != field and n <= len(items) and items[:n] == prev[1]:
                    blob, base = codec.encode_list(items[n:]), prev[0]
                else:
                    blob = codec.encode_list(items)
                lists[(keys.thread_id, ns, ch)] = (field, items)
            else:
                blob = codec.encode_blob(*codec.dumps(self.serde, values[ch]))
            args += [field, blob, base]
            fields.append(field)
        md = get_serializable_checkpoint_metadata(config, metadata)
        run_id = md.get("run_id")
        run_member = (f"{run_id}{_US}{member}"
                      if isinstance(run_id, str) and run_id and _US not in run_id else "")
        refs = codec.RS.join([f"{at}{ch}{_US}{ver}" for ch, ver in c["channel_versions"].items()])
        record = codec.encode_record(codec.dumps(self.serde, c), codec.dumps(self.serde, md),
                                     conf.get("checkpoint_id"))
        result: RunnableConfig = {"configurable": {
            "thread_id": conf["thread_id"], "checkpoint_ns": ns, "checkpoint_id": cid}}
        return _PutPlan(keys, [self._ttl_arg, member, record, refs, run_member, *args],
                        lists, fields, result)

    def _after_put(self, plan: _PutPlan, reply: list[Any]) -> bool:
        """Remember the lists just stored; False when a delta's base was gone (retry whole)."""
        if text(reply[0]) == "NOBASE":
            self._forget(plan.keys.thread_id)
            return False
        fresh = dict(zip(plan.fields, reply[1], strict=True))
        for k, entry in plan.lists.items():
            # A version stored before (maybe with other content) is no base to build on.
            self._remember(k, entry if fresh.get(entry[0]) == 1 else None)
        return True

    def _remember(self, key: tuple[str, str, str], entry: tuple[str, list[bytes]] | None
                  ) -> None:
        with self._lists_lock:
            if entry is None:
                self._drop_list(key)
                return
            if key not in self._lists:
                self._list_threads[key[0]] = self._list_threads.get(key[0], 0) + 1
            self._lists[key] = entry
            self._lists.move_to_end(key)
            while len(self._lists) > _CACHE_SIZE:
                self._drop_list(next(iter(self._lists)))

    def _sent_put(self, plan: _PutPlan, refuse: bool = True) -> Callable[[Any], None]:
        """Remember the lists of a put written without waiting (the next put may extend them
        before its reply is read); the returned callback checks that reply at the barrier.
        ``refuse``: a NOBASE raises there (else it is only noted on the plan, for the put
        itself to handle: a barrier read by another caller is not refused for it)."""
        for k, entry in plan.lists.items():
            self._remember(k, entry)

        def on_reply(reply: Any) -> None:
            if text(reply[0]) == "NOBASE":
                self._forget(plan.keys.thread_id)
                cid = plan.result["configurable"]["checkpoint_id"]
                plan.gone = _BaseGone(
                    f"checkpoint {cid!r} of thread {plan.keys.thread_id!r} was not saved: the "
                    f"list blob {text(reply[1])!r} it appends to is gone (the thread was "
                    "deleted or pruned while the graph ran)")
                if refuse:
                    raise plan.gone
                return
            fresh = dict(zip(plan.fields, reply[1], strict=True))
            for k, entry in plan.lists.items():
                if fresh.get(entry[0]) != 1:  # stored before: no base to build on
                    self._forget_list(k, entry[0])

        return on_reply

    def _forget_list(self, key: tuple[str, str, str], field: str) -> None:
        with self._lists_lock:
            entry = self._lists.get(key)
            if entry is not None and entry[0] == field:
                self._drop_list(key)

    def _put_on_run(self, session: RunSession, config: RunnableConfig, checkpoint: Checkpoint,
                    metadata: CheckpointMetadata, new_versions: ChannelVersions
                    ) -> RunnableConfig:
        plan = self._plan_put(config, checkpoint, metadata, new_versions)
        crash_point("before_checkpoint")
        try:
            if session.pipelined:  # written, not waited for; a refusal stops the run
                session.send_script("langgraph.put", plan.keys.all, plan.args,
                                    self._sent_put(plan), defer=True, expect=_PUT_EXPECT)
            else:
                # Held, then acknowledged with the task writes held before it: one round trip
                # for the superstep. Its reply is kept and asks nothing of the batch: a NOBASE
                # is noted on the plan and this put handles it, put again at once, whole.
                for whole in (False, True):
                    session.send_script("langgraph.put", plan.keys.all, plan.args,
                                        self._sent_put(plan, refuse=False), defer=True)
                    session.barrier()  # or another caller's round trip read it
                    if plan.gone is None:
                        break
                    if whole:
                        raise plan.gone
                    plan = self._plan_put(config, checkpoint, metadata, new_versions,
                                          deltas=False)
        except BaseException:
            self._forget(plan.keys.thread_id)
            raise
        crash_point("after_checkpoint")
        return plan.result

    async def _aput_on_run(self, session: RunSession, config: RunnableConfig,
                           checkpoint: Checkpoint, metadata: CheckpointMetadata,
                           new_versions: ChannelVersions) -> RunnableConfig:
        plan = self._plan_put(config, checkpoint, metadata, new_versions)
        crash_point("before_checkpoint")
        try:
            if session.pipelined:
                await session.asend_script("langgraph.put", plan.keys.all, plan.args,
                                           self._sent_put(plan), defer=True,
                                           expect=_PUT_EXPECT)
            else:
                for whole in (False, True):
                    await session.asend_script("langgraph.put", plan.keys.all, plan.args,
                                               self._sent_put(plan, refuse=False), defer=True)
                    await session.abarrier()
                    if plan.gone is None:
                        break
                    if whole:
                        raise plan.gone
                    plan = self._plan_put(config, checkpoint, metadata, new_versions,
                                          deltas=False)
        except BaseException:
            self._forget(plan.keys.thread_id)
            raise
        crash_point("after_checkpoint")
        return plan.result

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        session = self._run_of(config["configurable"]["thread_id"])
        if session is not None:
            return self._put_on_run(session, config, checkpoint, metadata, new_versions)
        plan = self._plan_put(config, checkpoint, metadata, new_versions)
        crash_point("before_checkpoint")
        with self._io("put"):
            if not self._after_put(plan, self._scripts["put"](plan.keys.all, plan.args)):
                plan = self._plan_put(config, checkpoint, metadata, new_versions, deltas=False)
                self._after_put(plan, self._scripts["put"](plan.keys.all, plan.args))
        crash_point("after_checkpoint")
        return plan.result

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        session = self._run_of(config["configurable"]["thread_id"])
        if session is not None:
            return await self._aput_on_run(session, config, checkpoint, metadata, new_versions)
        plan = self._plan_put(config, checkpoint, metadata, new_versions)
        scripts = self._aclient()[1]
        crash_point("before_checkpoint")
        with self._io("put"):
            if not self._after_put(plan, await scripts["put"](plan.keys.all, plan.args)):
                plan = self._plan_put(config, checkpoint, metadata, new_versions, deltas=False)
                self._after_put(plan, await scripts["put"](plan.keys.all, plan.args))
        crash_point("after_checkpoint")
        return plan.result

    # ---- put_writes ---------------------------------------------------------------------------
    def _plan_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                     task_id: str, task_path: str) -> tuple[ThreadKeys, list[Any]]:
        conf = config["configurable"]
        keys = self._keys(conf["thread_id"])
        ns = codec.check_name("checkpoint_ns", conf.get("checkpoint_ns", ""))
        member = f"{ns}{_US}{codec.check_name('checkpoint id', conf['checkpoint_id'])}"
        codec.check_name("task id", task_id)
        args: list[Any] = [self._ttl_arg]
        for idx, (channel, value) in enumerate(writes):
            # Special channels (errors, interrupts) have fixed negative slots and the latest
            # wins; regular writes keep the first one stored, so a retried task is a no-op.
            slot = WRITES_IDX_MAP.get(channel, idx)
            args += [f"{member}{_US}{task_id}{_US}{slot}",
                     codec.encode_write(channel, codec.dumps(self.serde, value), task_path),
                     "1" if slot < 0 else "0"]
        return keys, args

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        keys, args = self._plan_writes(config, writes, task_id, task_path)
        if len(args) > 1:
            crash_point("before_writes")
            session = self._run_of(config["configurable"]["thread_id"])
            if session is not None:
                # Never waited for, at any level: a task whose writes are lost runs again
                # (its recorded calls replay). Held until the next record (the superstep's
                # checkpoint, a step record, a read or the run's end) and sent with it.
                session.send_script("langgraph.put_writes", keys.all, args, no_verdict,
                                    hold=True)
            else:
                with self._io("put_writes"):
                    self._scripts["put_writes"](keys.all, args)
            crash_point("after_writes")

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        keys, args = self._plan_writes(config, writes, task_id, task_path)
        if len(args) > 1:
            crash_point("before_writes")
            session = self._run_of(config["configurable"]["thread_id"])
            if session is not None:
                await session.asend_script("langgraph.put_writes", keys.all, args, no_verdict,
                                           hold=True)
            else:
                with self._io("put_writes"):
                    await self._aclient()[1]["put_writes"](keys.all, args)
            crash_point("after_writes")

    # ---- reading ------------------------------------------------------------------------------
    def _tuple(self, keys: ThreadKeys, thread_id: Any, reply: list[Any],
               remember: bool) -> CheckpointTuple:
        member, rec, flat, wfields, wvalues = reply
        member = text(member)
        ns, _, cid = member.rpartition(_US)
        ck_typed, md_typed, parent = codec.decode_record(rec, keys.cp, member)
        checkpoint = codec.loads(self.serde, *ck_typed, keys.cp, member)
        metadata = codec.loads(self.serde, *md_typed, keys.cp, member)
        blobs = {text(flat[i]): (flat[i + 1], text(flat[i + 2])) for i in range(0, len(flat), 3)}
        values: dict[str, Any] = {}
        for ch, ver in checkpoint["channel_versions"].items():
            field = f"{ns}{_US}{ch}{_US}{ver}"
            raw = blobs.get(field, (None, ""))[0]
            if raw is None:  # a version never stored (as InMemorySaver: no value)
                continue
            type_, data = codec.decode_blob(raw, keys.blobs, field)
            if type_ == codec.EMPTY:
                continue
            if type_ != codec.LIST:
                values[ch] = codec.loads(self.serde, type_, data, keys.blobs, field)
                continue
            items = self._list_items(keys, field, blobs)
            values[ch] = [codec.loads(self.serde, *codec.decode_blob(i, keys.blobs, field),
                                      keys.blobs, field) for i in items]
            if remember:
                self._remember((keys.thread_id, ns, ch), (field, items))
        pending = []
        for wf, wv in zip(wfields, wvalues, strict=True):
            if wv is None:
                continue
            wf = text(wf)
            task_id, _, slot = wf[len(member) + 1:].rpartition(_US)
            channel, typed, task_path = codec.decode_write(wv, keys.writes, wf)
            pending.append((writes_sort_key(task_path, task_id, int(slot)), task_id, channel,
                            typed, wf))
        pending.sort(key=lambda p: p[0])
        base = {"thread_id": thread_id, "checkpoint_ns": ns}
        return CheckpointTuple(
            config={"configurable": {**base, "checkpoint_id": cid}},
            checkpoint={**checkpoint, "channel_values": values},  # type: ignore[typeddict-item]
            metadata=metadata,
            parent_config={"configurable": {**base, "checkpoint_id": parent}} if parent else None,
            pending_writes=[(t, c, codec.loads(self.serde, *v, keys.writes, f))
                            for _, t, c, v, f in pending],
        )

    @staticmethod
    def _list_items(keys: ThreadKeys, field: str,
                    blobs: dict[str, tuple[bytes | None, str]]) -> list[bytes]:
        parts: list[list[bytes]] = []
        cur = field
        while cur:
            raw, base = blobs.get(cur, (None, ""))
            if raw is None:
                raise CorruptRecordError(keys.blobs, f"field {cur!r}, the base of {field!r}, "
                                         "is missing")
            type_, data = codec.decode_blob(raw, keys.blobs, cur)
            if type_ != codec.LIST:
                raise CorruptRecordError(keys.blobs, f"field {cur!r} is {type_!r}, not a list")
            parts.append(codec.decode_list(data, keys.blobs, cur))
            cur = base
        return [item for part in reversed(parts) for item in part]

    @staticmethod
    def _load_args(config: RunnableConfig) -> list[str]:
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns", "")
        return [f"{ns}{_US}", conf.get("checkpoint_id") or ""]

    def first_read(self, config: RunnableConfig) -> tuple[str, list[str], list[Any]]:
        """What an invocation's first get_tuple reads, made in the round trip that opens the
        thread's run (``Ledger.open_run(read=...)``)."""
        return ("langgraph.load", self._keys(config["configurable"]["thread_id"]).all,
                self._load_args(config))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        keys = self._keys(config["configurable"]["thread_id"])
        session = self._run_of(config["configurable"]["thread_id"])
        if session is not None:
            args = self._load_args(config)
            reply = session.prefetched("langgraph.load", keys.all, args)
            if reply is NOT_READ:  # a barrier: the read sees every write sent before it
                session.barrier()
                reply = session.call_script("langgraph.load", keys.all, args)
        else:
            with self._io("get_tuple"):
                reply = self._scripts["load"](keys.all, self._load_args(config))
        if not reply:
            self._forget(keys.thread_id)  # gone (deleted, expired): no base for deltas
            return None
        return self._tuple(keys, config["configurable"]["thread_id"], reply, remember=True)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        keys = self._keys(config["configurable"]["thread_id"])
        session = self._run_of(config["configurable"]["thread_id"])
        if session is not None:
            args = self._load_args(config)
            reply = session.prefetched("langgraph.load", keys.all, args)
            if reply is NOT_READ:
                await session.abarrier()
                reply = await session.acall_script("langgraph.load", keys.all, args)
        else:
            with self._io("get_tuple"):
                reply = await self._aclient()[1]["load"](keys.all, self._load_args(config))
        if not reply:
            self._forget(keys.thread_id)
            return None
        return self._tuple(keys, config["configurable"]["thread_id"], reply, remember=True)

    # ---- list ---------------------------------------------------------------------------------
    @staticmethod
    def _range(ns: str | None, before: str | None,
               limit: int | None) -> tuple[bytes, bytes, int | None]:
        if ns is None:
            return b"+", b"-", None
        prefix = f"{ns}{_US}".encode()
        top = b"(" + prefix + before.encode() if before else b"[" + prefix + b"\xff"
        return top, b"[" + prefix, limit

    @staticmethod
    def _order(members: list[bytes], ns: str | None, before: str | None,
               only: str | None) -> list[str]:
        out = [text(m) for m in members]
        if only:  # the config names one checkpoint: list just that one (as other savers do)
            out = [m for m in out if m.rpartition(_US)[2] == only]
        if ns is None:  # every namespace: newest checkpoint id first
            out = [m for m in out if not before or m.rpartition(_US)[2] < before]
            out.sort(key=lambda m: m.rpartition(_US)[2], reverse=True)
        return out

    @staticmethod
    def _list_params(config: RunnableConfig | None, before: RunnableConfig | None
                     ) -> tuple[str | None, str | None, str | None]:
        ns = config["configurable"].get("checkpoint_ns") if config else None
        b = before["configurable"].get("checkpoint_id") if before else None
        only = config["configurable"].get("checkpoint_id") if config else None
        return ns, b, only

    def _threads(self, config: RunnableConfig | None) -> builtins.list[Any]:
        if config is not None and config["configurable"].get("thread_id") is not None:
            return [config["configurable"]["thread_id"]]
        with self._io("list"):
            return sorted({thread_of(self.ledger.prefix, k) for k in
                           self.ledger.redis.scan_iter(match=thread_pattern(self.ledger.prefix, "ix"),
                                                       count=1000)})

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None
             ) -> Iterator[CheckpointTuple]:
        ns, b, only = self._list_params(config, before)
        left = limit
        session = _context._session.get()
        if session is not None and not session.finished and session.ledger is self.ledger:
            session.barrier()  # a listing sees the run's writes sent before it
        for thread_id in self._threads(config):
            keys = self._keys(thread_id)
            top, bottom, cap = self._range(ns, b, None if filter or only else left)
            with self._io("list"):
                # redis-py types the sync client's replies as "Awaitable | Any".
                raw = cast(builtins.list[bytes],
                           self.ledger.redis.zrevrangebylex(keys.ix, top, bottom, 0, cap)
                           if cap is not None
                           else self.ledger.redis.zrevrangebylex(keys.ix, top, bottom))
            members = self._order(raw, ns, b, only)
            for i in range(0, len(members), _LOAD_CHUNK):
                with self._io("list"):
                    replies = self._scripts["load_many"](keys.all, members[i:i + _LOAD_CHUNK])
                for reply in replies:
                    if not reply:
                        continue
                    tup = self._tuple(keys, thread_id, reply, remember=False)
                    if filter and any(tup.metadata.get(k) != v for k, v in filter.items()):
                        continue
                    yield tup
                    if left is not None:
                        left -= 1
                        if left <= 0:
                            return

    async def _athreads(self, config: RunnableConfig | None) -> builtins.list[Any]:
        if config is not None and config["configurable"].get("thread_id") is not None:
            return [config["configurable"]["thread_id"]]
        client = self._aclient()[0]
        with self._io("list"):
            return sorted({thread_of(self.ledger.prefix, k) async for k in
                           client.scan_iter(match=thread_pattern(self.ledger.prefix, "ix"), count=1000)})

    async def alist(self, config: RunnableConfig | None, *,
                    filter: dict[str, Any] | None = None, before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        ns, b, only = self._list_params(config, before)
        left = limit
        session = _context._session.get()
        if session is not None and not session.finished and session.ledger is self.ledger:
            await session.abarrier()
        client, scripts = self._aclient()
        for thread_id in await self._athreads(config):
            keys = self._keys(thread_id)
            top, bottom, cap = self._range(ns, b, None if filter or only else left)
            with self._io("list"):
                raw = (await client.zrevrangebylex(keys.ix, top, bottom, 0, cap)
                       if cap is not None else await client.zrevrangebylex(keys.ix, top, bottom))
            members = self._order(raw, ns, b, only)
            for i in range(0, len(members), _LOAD_CHUNK):
                with self._io("list"):
                    replies = await scripts["load_many"](keys.all, members[i:i + _LOAD_CHUNK])
                for reply in replies:
                    if not reply:
                        continue
                    tup = self._tuple(keys, thread_id, reply, remember=False)
                    if filter and any(tup.metadata.get(k) != v for k, v in filter.items()):
                        continue
                    yield tup
                    if left is not None:
                        left -= 1
                        if left <= 0:
                            return

    def get_next_version(self, current: str | None, channel: None) -> str:
        # Zero-padded so versions sort as strings; the random tail keeps two processes that
        # fork one thread from writing different values under one version.
        if current is None:
            n = 0
        elif isinstance(current, int):
            n = current
        else:
            n = int(str(current).split(".")[0])
        return f"{n + 1:016}.{random.getrandbits(32):08x}"


# At 'async'/'exit' a put's reply is kept for the barrier (which list versions it stored
# fresh: bases for the next deltas), except NOBASE: then it is refused, and nothing sent after
# it is applied, the run's finish included (the session stops; the run resumes).
_PUT_EXPECT = KEEP_UNLESS + "NOBASE"


class _BaseGone(LedgerError):
    """A checkpoint written as an append to a list blob that is no longer stored: not saved."""


def _install_call_recording() -> None:
    # lg-calls' module patches the chat model and tool entry points (idempotent, inert
    # outside a durable graph); until it exists the checkpointer works on its own.
    try:
        module = importlib.import_module("agentledger.langgraph._recording")
    except ModuleNotFoundError as e:
        if e.name != "agentledger.langgraph._recording":
            raise
        return
    module.install()
