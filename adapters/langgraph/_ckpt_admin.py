"""Thread housekeeping of the checkpointer: delete a thread (with its recorded steps), delete
what some LangGraph runs wrote, copy a thread, prune old checkpoints. Sync and async twins."""

from __future__ import annotations

import builtins
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis.asyncio as aredis
from redis.commands.core import AsyncScript, Script

from agentledger import Ledger

from ._ckpt_codec import US as _US
from ._ckpt_keys import NAMES as _NAMES
from ._ckpt_keys import ThreadKeys, thread_of, thread_pattern
from ._ckpt_keys import text as _s

__all__ = ["ThreadAdmin"]


class ThreadAdmin:
    """The optional ``BaseCheckpointSaver`` methods, over the keys of :mod:`._ckpt_lua`."""

    ledger: Ledger
    _scripts: dict[str, Script]
    _ttl_ms: int

    @abstractmethod
    def _keys(self, thread_id: Any) -> ThreadKeys: ...

    @abstractmethod
    def _aclient(self) -> tuple[aredis.Redis, dict[str, AsyncScript]]: ...

    @abstractmethod
    def _io(self, what: str) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _forget(self, thread_id: str) -> None: ...

    def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's checkpoints and writes, and every step recorded in its run."""
        keys = self._keys(thread_id)
        self._forget(keys.thread_id)
        self.ledger.delete_run(keys.thread_id)
        with self._io("delete_thread"):
            self.ledger.redis.delete(*keys.own)

    async def adelete_thread(self, thread_id: str) -> None:
        keys = self._keys(thread_id)
        self._forget(keys.thread_id)
        await self.ledger.adelete_run(keys.thread_id)
        with self._io("delete_thread"):
            await self._aclient()[0].delete(*keys.own)

    @staticmethod
    def _run_ranges(run_ids: Sequence[str]) -> builtins.list[tuple[str, bytes, bytes]]:
        return [(r, b"[" + f"{r}{_US}".encode(), b"[" + f"{r}{_US}".encode() + b"\xff")
                for r in run_ids if r and _US not in r]

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that the given LangGraph runs made."""
        ranges = self._run_ranges(run_ids)
        if not ranges:
            return
        client = self.ledger.redis
        with self._io("delete_for_runs"):
            for key in list(client.scan_iter(match=thread_pattern(self.ledger.prefix, "runs"), count=1000)):
                keys = self._keys(thread_of(self.ledger.prefix, key))
                pipe = client.pipeline(transaction=False)
                for _, lo, hi in ranges:
                    pipe.zrangebylex(keys.runs, lo, hi)
                found = [_s(m).partition(_US)[2] for got in pipe.execute() for m in got]
                if found:
                    self._forget(keys.thread_id)
                    self._scripts["drop"](keys.all, ["members", *found])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        ranges = self._run_ranges(run_ids)
        if not ranges:
            return
        client, scripts = self._aclient()
        with self._io("delete_for_runs"):
            found_keys = [k async for k in client.scan_iter(match=thread_pattern(self.ledger.prefix, "runs"),
                                                            count=1000)]
            for key in found_keys:
                keys = self._keys(thread_of(self.ledger.prefix, key))
                pipe = client.pipeline(transaction=False)
                for _, lo, hi in ranges:
                    pipe.zrangebylex(keys.runs, lo, hi)
                found = [_s(m).partition(_US)[2] for got in await pipe.execute() for m in got]
                if found:
                    self._forget(keys.thread_id)
                    await scripts["drop"](keys.all, ["members", *found])

    def _copy_reads(self, pipe: Any, src: ThreadKeys) -> None:
        for i, _ in enumerate(_NAMES):
            if _NAMES[i] in ("ix", "wix", "runs"):
                pipe.zrange(src.all[i], 0, -1)
            else:
                pipe.hgetall(src.all[i])

    def _copy_writes(self, pipe: Any, dst: ThreadKeys, got: builtins.list[Any]) -> bool:
        if not got[_NAMES.index("ix")]:
            return False
        data: Any
        for i, data in enumerate(got):
            if not data:
                continue
            if isinstance(data, dict):
                pipe.hset(dst.all[i], mapping=data)
            else:
                pipe.zadd(dst.all[i], dict.fromkeys(data, 0))
        pipe.sadd(dst.keyset, *dst.own)
        if self._ttl_ms:
            for k in dst.all:
                pipe.pexpire(k, self._ttl_ms)
        return True

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of a thread to another thread (not its steps)."""
        src, dst = self._keys(source_thread_id), self._keys(target_thread_id)
        with self._io("copy_thread"):
            pipe = self.ledger.redis.pipeline(transaction=False)
            self._copy_reads(pipe, src)
            got = pipe.execute()
            pipe = self.ledger.redis.pipeline(transaction=False)
            if self._copy_writes(pipe, dst, got):
                pipe.execute()

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        src, dst = self._keys(source_thread_id), self._keys(target_thread_id)
        client = self._aclient()[0]
        with self._io("copy_thread"):
            pipe = client.pipeline(transaction=False)
            self._copy_reads(pipe, src)
            got = await pipe.execute()
            pipe = client.pipeline(transaction=False)
            if self._copy_writes(pipe, dst, got):
                await pipe.execute()

    @staticmethod
    def _check_strategy(strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's newest checkpoint (and the blobs it needs);
        ``delete``: delete the threads, recorded steps included."""
        self._check_strategy(strategy)
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            keys = self._keys(thread_id)
            self._forget(keys.thread_id)
            with self._io("prune"):
                self._scripts["drop"](keys.all, ["latest"])

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._check_strategy(strategy)
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
                continue
            keys = self._keys(thread_id)
            self._forget(keys.thread_id)
            with self._io("prune"):
                await self._aclient()[1]["drop"](keys.all, ["latest"])
