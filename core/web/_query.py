"""Paged reads of the runs index for the console: one page of runs without loading them all.

The index (``<prefix>:runs``) is a sorted set of run ids scored by last update. A page walks it
newest first with ZREVRANGEBYSCORE ... LIMIT in batches, reads only those runs' hashes, and
keeps the ones that match; the cursor is the (score, run id) of the last run looked at, so the
next page starts right after it however many runs came and went in between.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from .._keys import RunKeys, runs_index
from .._ledger import Ledger
from .._records import RunRecord, RunStatus

__all__ = ["RunFilter", "RunPage", "count_statuses", "page_runs"]

STATUSES = ("running", "waiting", "completed", "failed", "stalled")
_BATCH = 500
# How many run records one page request may read, and how many index entries it may look at,
# before it answers with what it found (a rare filter over 100,000 runs answers in bounded
# time; "next page" continues from the cursor). A search over run ids reads no record for the
# ids that do not match, so it may look further.
_READ_BUDGET = 20_000
_SCAN_BUDGET = 200_000


@dataclass(frozen=True, slots=True)
class RunFilter:
    status: str | None = None  # a RunStatus or "stalled"
    kind: str | None = None
    since_ms: int | None = None  # last update at or after
    until_ms: int | None = None  # last update at or before
    search: str | None = None  # a part of the run id, case-insensitive


@dataclass(slots=True)
class RunPage:
    runs: list[tuple[RunRecord, str]] = field(default_factory=list)  # (run, shown status)
    cursor: str | None = None  # where the next page starts; None at the end
    scanned: int = 0  # index entries looked at
    read: int = 0  # run records read


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def parse_cursor(cursor: str | None) -> tuple[float, str | None]:
    """``"<score>:<run id>"`` -> (score, run id); no cursor -> (+inf, None). A bad cursor is
    a ``ValueError`` that says what it should look like."""
    if not cursor:
        return float("inf"), None
    score, sep, run_id = cursor.partition(":")
    try:
        return float(int(score)), run_id if sep else None
    except ValueError:
        raise ValueError(f"cursor {cursor!r} is not '<ms>:<run id>'") from None


def shown_status(ledger: Ledger, run: RunRecord, now_ms: int) -> str:
    return "stalled" if ledger.is_stalled(run, now_ms) else str(run.status)


def page_runs(ledger: Ledger, where: RunFilter, cursor: str | None = None,
              limit: int = 50) -> RunPage:
    """One page of runs matching ``where``, newest update first, starting after ``cursor``."""
    top, after_id = parse_cursor(cursor)
    low: float | str = where.since_ms if where.since_ms is not None else "-inf"
    if where.until_ms is not None:
        top = min(top, float(where.until_ms))
    needle = where.search.lower() if where.search else None
    page = RunPage()
    offset = 0
    # Unfiltered, a page's worth is enough; filtered, read in larger batches.
    batch_size = limit if not (where.status or where.kind or needle) else _BATCH
    now = int(time.time() * 1000)
    key = runs_index(ledger.prefix)
    with ledger.redis_errors():
        while page.scanned < _SCAN_BUDGET and page.read < _READ_BUDGET:
            high = "+inf" if top == float("inf") else int(top)
            raw = cast(list[tuple[bytes, float]], ledger.redis.zrevrangebyscore(
                key, high, low, start=offset, num=batch_size, withscores=True))
            if not raw:
                page.cursor = None
                return page
            offset += len(raw)
            batch = []
            for member, score in raw:
                page.scanned += 1
                rid = _s(member)
                # Equal scores come in descending id order: skip up to the cursor's run.
                if after_id is not None and score == top and rid >= after_id:
                    continue
                if needle is not None and needle not in rid.lower():
                    continue
                batch.append((rid, int(score)))
            pipe = ledger.redis.pipeline(transaction=False)
            for rid, _ in batch:
                k = RunKeys(ledger.prefix, rid)
                pipe.hgetall(k.run)
                pipe.pttl(k.run)
            replies: list[Any] = pipe.execute() if batch else []
            page.read += len(batch)
            for i, (rid, score) in enumerate(batch):
                page.cursor = f"{score}:{rid}"
                h = replies[2 * i]
                if not h:
                    continue  # expired; `gc` drops it from the index
                run = RunRecord.from_hash(RunKeys(ledger.prefix, rid).run,
                                          {_s(a): _s(b) for a, b in h.items()}, replies[2 * i + 1])
                status = shown_status(ledger, run, now)
                if where.status and status != where.status:
                    continue
                if where.kind and run.kind != where.kind:
                    continue
                page.runs.append((run, status))
                if len(page.runs) >= limit:
                    return page
            if len(raw) < batch_size:
                page.cursor = None
                return page
            page.cursor = f"{int(raw[-1][1])}:{_s(raw[-1][0])}"
    return page


def count_statuses(ledger: Ledger) -> dict[str, int]:
    """How many runs of each shown status (stalled counted apart from running): reads three
    fields per run in pipelined batches, never whole records."""
    counts = dict.fromkeys(STATUSES, 0)
    now = int(time.time() * 1000)
    key = runs_index(ledger.prefix)
    with ledger.redis_errors():
        total = int(cast(int, ledger.redis.zcard(key)))
        for start in range(0, total, 2000):
            ids = [_s(x) for x in cast(list[bytes],
                                       ledger.redis.zrevrange(key, start, start + 1999))]
            pipe = ledger.redis.pipeline(transaction=False)
            for rid in ids:
                pipe.hmget(RunKeys(ledger.prefix, rid).run, ["status", "lease_until", "owner"])
            for status, lease, owner in pipe.execute():
                if status is None:
                    continue
                name = _s(status)
                if name == RunStatus.RUNNING:
                    run = RunRecord.model_construct(status=RunStatus.RUNNING,
                                                    lease_until=int(lease or 0),
                                                    owner=_s(owner or b""))
                    name = shown_status(ledger, run, now)
                if name in counts:
                    counts[name] += 1
    return counts
