"""Rewinding the SDK session (conversation memory) of a run that starts again.

A crashed attempt may have added items to the session (the user's input, model output, tool
results) before it died; the replay adds them again, so they are taken out first. The session is
used the way the SDK's run loop uses it:

- a context-aware session (methods taking ``wrapper=``) gets the run's context wrapper, so a
  per-tenant session reads and pops its own scope;
- reads pass an explicit ``limit`` and never the whole history: the session's own bounds
  (``EncryptedSession(max_scan_items=...)``) apply, and a run reads only its end;
- with ``tracing_disabled`` no span of the session's calls is recorded.

Where a round of the run first starts, the last few items of the session are kept (digests,
under the run's ``oa-session`` key); a restart finds that tail again at the end of the history
and pops what comes after it. A history rewritten in between (compaction, an edit) no longer
holds that tail: that is a clear :class:`LedgerError`, never a silent wrong rewind.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from collections.abc import Iterator
from typing import Any

from agents import RunConfig, RunContextWrapper, trace

from agentledger import Ledger, LedgerError

from ._types import dump_item

__all__ = ["SESSION_KEY", "rewind_session"]

SESSION_KEY = "oa-session"
TAIL = 16  # items of the session kept to find where a round began
MAX_SCAN = 4096  # items read from the end, at most, to find it
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              default=str).encode


def _digest(item: Any) -> str:
    return hashlib.sha256(_canonical(dump_item(item)).encode()).hexdigest()[:24]


def _takes_wrapper(method: Any) -> bool:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "wrapper" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               for p in params)


def context_wrapper(memory: Any, context: Any) -> RunContextWrapper[Any] | None:
    """The wrapper the SDK passes a session: only to one whose four history methods all take
    ``wrapper`` (the SDK's rule for context-aware sessions)."""
    names = ("get_items", "add_items", "pop_item", "clear_session")
    if not all(_takes_wrapper(getattr(memory, n, None)) for n in names):
        return None
    return context if isinstance(context, RunContextWrapper) else RunContextWrapper(context)


@contextlib.contextmanager
def _tracing(run_config: RunConfig | None) -> Iterator[None]:
    # The SDK reads the session inside the run's trace; with tracing disabled, that trace is a
    # no-op one and so is every span under it.
    if run_config is not None and run_config.tracing_disabled:
        with trace("agentledger session rewind", disabled=True):
            yield
    else:
        yield


class _Memory:
    def __init__(self, memory: Any, wrapper: RunContextWrapper[Any] | None, where: str) -> None:
        self.memory, self.wrapper, self.where = memory, wrapper, where

    async def tail(self, limit: int) -> list[Any]:
        kwargs = {} if self.wrapper is None else {"wrapper": self.wrapper}
        try:
            items = await self.memory.get_items(limit, **kwargs)
        except (RuntimeError, ValueError) as e:  # a session's own read budget, say
            raise LedgerError(f"{self.where}: could not read the last {limit} session "
                              f"item(s) to rewind the session: {e}") from e
        return list(items)[-limit:] if limit else []

    async def pop(self) -> None:
        kwargs = {} if self.wrapper is None else {"wrapper": self.wrapper}
        await self.memory.pop_item(**kwargs)


def _rewritten(where: str, round_no: int) -> LedgerError:
    return LedgerError(
        f"{where}: the session no longer holds the history it had when round {round_no} of "
        "this run began (compacted or edited since), so the items a crashed attempt added "
        "cannot be taken out. Start a new run id, or restore the session.")


async def _added_since(mem: _Memory, anchor: list[str], complete: bool, round_no: int) -> int:
    """How many items were added after ``anchor``, the session's tail when the round began
    (``complete``: the anchor was the whole session)."""
    k = len(anchor)
    limit = 2 * TAIL
    while True:
        digests = [_digest(i) for i in await mem.tail(limit)]
        whole = len(digests) < limit
        if complete:
            if whole:
                if digests[:k] != anchor:
                    raise _rewritten(mem.where, round_no)
                return len(digests) - k
        else:
            # The nearest place from the end where the anchor sits: items after it are new.
            for added in range(len(digests) - k + 1):
                end = len(digests) - added
                if digests[end - k:end] == anchor:
                    return added
            if whole:
                raise _rewritten(mem.where, round_no)
        if limit >= MAX_SCAN:
            raise LedgerError(f"{mem.where}: more than {MAX_SCAN} session items since round "
                              f"{round_no} began; not rewinding that far")
        limit = min(limit * 4, MAX_SCAN)


async def rewind_session(ledger: Ledger, run_id: str, memory: Any, round_no: int, *,
                         context: Any = None, run_config: RunConfig | None = None) -> None:
    """Put the session back to where round ``round_no`` of the run first began."""
    key = ledger.keys(run_id).extra(SESSION_KEY)
    field = str(round_no)
    mem = _Memory(memory, context_wrapper(memory, context), key)
    client = ledger.async_client()
    with _tracing(run_config):
        with ledger.redis_errors():
            saved = await client.hget(key, field)
        if saved is None:
            tail = await mem.tail(TAIL)
            ours = json.dumps({"tail": [_digest(i) for i in tail],
                               "complete": len(tail) < TAIL}, separators=(",", ":"))
            pipe = client.pipeline(transaction=False)
            pipe.hsetnx(key, field, ours)
            pipe.hget(key, field)
            pipe.sadd(ledger.keys(run_id).keyset, key)
            with ledger.redis_errors():
                reply = await pipe.execute()
            if reply[0]:
                return  # this is where the round begins: nothing to take out
            saved = reply[1]
        try:
            data = json.loads(saved)
        except (TypeError, ValueError):
            data = None
        if isinstance(data, int):  # written by an earlier agentledger: the length
            added = len(await mem.tail(MAX_SCAN)) - data
        elif isinstance(data, dict) and isinstance(data.get("tail"), list):
            added = await _added_since(mem, [str(d) for d in data["tail"]],
                                       bool(data.get("complete")), round_no)
        else:
            raise LedgerError(f"{key}: session anchor of round {round_no} is unreadable")
        for _ in range(added):
            await mem.pop()
