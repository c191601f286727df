"""The hot path's own Redis connection.

Every tool and LLM call costs one or two script calls. Through the client, each call also pays
for redis-py's per-command layers (pool checkout and release, retry wrapper, instrumentation):
about as much as the round trip itself. A run session keeps one pooled connection for its step
scripts and sends EVALSHA on it directly; a second thread or task that finds it busy uses the
client as usual, so parallel tool calls never wait on each other.

At the ``async`` durability level (docs/durability.md) a record whose loss a re-run repairs is
*sent* and not waited for: the connection switches Redis's replies off (``CLIENT REPLY OFF``)
before the first such record, and the next barrier switches them on and reads, in the same
round trip, the state the records kept of themselves (:mod:`agentledger._replyoff`): how many
were applied, and the first one refused (fenced out, out of memory, a script error), raised
there as its reply would have been. With no reply ever left unread, a process killed right
after a send closes its socket cleanly and Redis applies everything it was handed. Redis applies
and logs one connection's commands in order, and a record runs only if the one before it did,
so whatever a crash or a refusal loses is a suffix of what was sent. That only holds while
every record of the session goes over this one connection: at ``async`` a caller that finds it
busy waits for it instead of using the client, and a broken connection with records
unacknowledged is an error at the barrier, never silently reconnected. While records are
unacknowledged the connection is named after the session's owner (``CLIENT SETNAME``), so that
a process taking the run over can wait until Redis has read all of it
(:func:`agentledger._replyoff.wait_until_gone`).

On a Redis Cluster the connection goes to the master owning the run's slot (every key of a run
shares its hash tag), so a run's records reach one node in order and a ``WAIT`` after them
counts them (:mod:`agentledger._nodes`). A failover (connection lost, MOVED, ...) during a
synchronous record re-reads the slot map and sends the record again to the new owner: the
claim and complete scripts are fenced and idempotent under one fencing token (a repeated claim
finds its own attempt, a repeated complete finds its own outcome), so a record that did reach
the old master, and its replica, is not applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from ._connect import ledger_error
from ._errors import LedgerError
from ._nodes import (
    SLOT_MOVED,
    aexchange,
    aowner_connection,
    arefresh_slots,
    arelease,
    as_cluster,
    asend_packed,
    exchange,
    owner_connection,
    pack,
    refresh_slots,
)
from ._replyoff import (
    BATCH_STATE,
    KEEP_REPLY,
    Batch,
    OnReply,
    Sent,
    aquiet_exchange,
    batch_error,
    client_name,
    judged_here,
    not_run_from,
    quiet_exchange,
    skipped_after_refusal,
    state_key,
    wrapped,
    wrapped_acknowledged,
    wrapped_sha,
)

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["DURABILITY_LEVELS", "NOT_HERE", "StepConnection"]

DURABILITY_LEVELS = ("sync", "async", "exit")
log = logging.getLogger("agentledger")

_REPLY_ON = ("CLIENT", "REPLY", "ON")
_REPLY_OFF = ("CLIENT", "REPLY", "OFF")
_SENT_AGAIN = object()  # a record after a batch that had to be sent again: send it as usual
# last_call: the record cannot go in one round trip with the barrier here; the caller waits
# for the barrier, then sends it as usual.
NOT_HERE: Any = object()


def _expected(expect: str | None) -> str:
    return KEEP_REPLY if expect is None else expect




def _size(keys: list[str], args: list[str | bytes]) -> int:
    """The bytes a record counts against ``max_unacked_bytes``. A record sent without waiting
    takes text only (str or bytes); anything else is refused with TypeError."""
    try:
        return sum(map(len, keys)) + sum(map(len, args))
    except TypeError:
        bad = next(a for a in [*keys, *args] if not isinstance(a, (str, bytes)))
        raise TypeError(f"a step record's keys and arguments are str or bytes, not "
                        f"{type(bad).__name__} ({bad!r:.60})") from None


class StepConnection:
    """One session's connection for step scripts (sync and asyncio).

    ``base``, ``fence`` and ``owner`` name the run's slot, the session's lease and its owner:
    without them (``base=''``) nothing is sent unacknowledged."""

    def __init__(self, ledger: Ledger, route_key: str | None = None, *, base: str = "",
                 fence: int = 0, owner: str = "") -> None:
        self._ledger = ledger
        # On a cluster: the key whose slot's master takes the records (the run's hash tag);
        # without one, a cluster session uses the client.
        self._route_key = route_key
        self._enabled = route_key is not None or not ledger.cluster
        self._quiet_ok = bool(base)
        self.pipelined = self._enabled and self._quiet_ok and ledger.durability != "sync"
        # Records sent from asyncio are read at an asyncio barrier; a run opened with the
        # synchronous API ends with a synchronous one, so there they are acknowledged at once.
        self.opened_async = False
        self._state = {which: state_key(base, fence, which) for which in ("s", "a")}
        self._name = client_name(owner) if owner else ""
        # A refused batch stops the session: what it believed recorded is not (sticky).
        self._failed: BaseException | None = None
        self._conn: Any = None
        self._pool: Any = None  # the pool self._conn goes back to (a cluster node's own)
        self._lock = threading.Lock()
        self._pending = Batch()
        # Records held in this process until the next record or barrier (``send(hold=...)``,
        # and ``defer`` at 'sync'): they go in the same write as what comes next.
        self._held: list[Sent] = []
        self._aheld: list[Sent] = []
        self._held_bytes = self._aheld_bytes = 0  # their sizes (counted once each)
        self._aconn: Any = None
        self._anode: Any = None  # a cluster node: the owner of self._aconn
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._alock: asyncio.Lock | None = None
        self._apending = Batch()

    def set_level(self, level: str) -> None:
        """This session's durability level (before it records anything)."""
        if level not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, not {level!r}")
        if self.unacknowledged:
            raise RuntimeError("the durability level is chosen before the first record")
        self.pipelined = self._enabled and self._quiet_ok and level != "sync"

    def swap_level(self, level: str) -> bool:
        """Record at ``level`` from now on, mid-run (an adapter's own level inside a run opened
        elsewhere); returns the previous setting for :meth:`restore_level`. Records sent before
        keep theirs: the next acknowledged record (or barrier) acknowledges them first, and a
        record is never sent around them (see ``_take``)."""
        if level not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, not {level!r}")
        before = self.pipelined
        self.pipelined = self._enabled and self._quiet_ok and level != "sync"
        return before

    def restore_level(self, before: bool) -> None:
        self.pipelined = before

    @property
    def used(self) -> bool:
        """Whether anything was sent, held or called on this connection yet."""
        return (self._conn is not None or self._aconn is not None or bool(self._held)
                or bool(self._aheld))

    @property
    def unacknowledged(self) -> int:
        """How many records were sent and not acknowledged yet."""
        return (len(self._pending.items) + len(self._apending.items) + len(self._held)
                + len(self._aheld))

    # ---- what the records sent with replies off need ------------------------------------------
    def _probe_commands(self, conn: Any) -> list[tuple[Any, ...]]:
        # The ACL may deny CLIENT REPLY or SETNAME (or a proxy not know them), or EVAL and the
        # wrapper's HMGET: asked once per ledger. SETNAME restores the name the connection
        # was given (none: '').
        return [_REPLY_ON, ("CLIENT", "SETNAME", self._restored_name(conn)),
                ("EVAL", "return redis.call('HMGET', KEYS[1], 'n', 'f')", 1, self._state["s"])]

    @staticmethod
    def _restored_name(conn: Any) -> str:
        return getattr(conn, "client_name", None) or ""

    def _after_probe(self, replies: list[Any]) -> None:
        ledger = self._ledger
        refused = next((r for r in (replies[0], replies[2]) if isinstance(r, Exception)), None)
        if refused is not None:
            ledger._replies_off = False
            log.warning("agentledger: Redis refused what records sent without waiting need "
                        "(CLIENT REPLY, EVAL, HMGET: %s): records at durability 'async'/'exit' "
                        "are acknowledged one by one, as at 'sync'", refused)
        else:
            ledger._replies_off = True
        if isinstance(replies[1], Exception):
            ledger._names_denied = True
            log.warning("agentledger: Redis refused CLIENT SETNAME (%s): a process taking a run "
                        "over cannot wait for Redis to read what a killed owner sent, and may "
                        "re-run those steps (with their keys)", replies[1])

    def _open_batch(self, conn: Any) -> list[tuple[Any, ...]]:
        if self._name and not self._ledger._names_denied:
            return [_REPLY_OFF, ("CLIENT", "SETNAME", self._name)]
        return [_REPLY_OFF]

    def _close_batch(self, conn: Any, which: str, sent: int) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = [_REPLY_ON, ("EVAL", BATCH_STATE, 1, self._state[which],
                                                       sent)]
        if self._name and not self._ledger._names_denied:
            commands.append(("CLIENT", "SETNAME", self._restored_name(conn)))
        return commands

    def _record(self, batch: Batch, conn: Any, name: str, keys: list[str], args: list[Any],
                which: str, expect: str | None, seq: int) -> list[tuple[Any, ...]]:
        """The commands that send one record of ``batch`` (its script loaded first, once per
        socket: EVALSHA spares Redis hashing the script's body on every record)."""
        source = self._ledger._scripts[name].script
        commands: list[tuple[Any, ...]] = []
        loaded = batch.loaded_over(conn)
        if name not in loaded:
            loaded.add(name)
            commands.append(("SCRIPT", "LOAD", wrapped(source)))
        commands.append(("EVALSHA", wrapped_sha(source), len(keys) + 1, *keys,
                         self._state[which], *args, seq, _expected(expect)))
        return commands

    def _again(self, conn: Any, items: list[Sent], which: str
               ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Records whose scripts were not run (flushed after they were loaded), sent again
        as a batch of their own with their source (EVAL: no NOSCRIPT), and its barrier: the
        commands sent with replies off, and those whose replies are read. The next batch loads
        its scripts again."""
        (self._pending if which == "s" else self._apending).loaded.clear()
        quiet = [*self._open_batch(conn)]
        for seq, (name, keys, args, expect, _on_reply, _waited) in enumerate(items, 1):
            quiet.append(("EVAL", wrapped(self._ledger._scripts[name].script), len(keys) + 1,
                          *keys, self._state[which], *args, seq, _expected(expect)))
        loud = self._close_batch(conn, which, len(items))
        if self._ledger.wait_replicas:
            loud.append(self._ledger.wait_command())
        return quiet, loud

    def _acknowledged(self, name: str, keys: list[str], args: list[Any], which: str,
                      seq: int) -> tuple[Any, ...]:
        return ("EVAL", wrapped_acknowledged(self._ledger._scripts[name].script), len(keys) + 1,
                *keys, self._state[which], *args, seq, "")

    def _failed_with(self, error: BaseException) -> BaseException:
        self._failed = error
        return error

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _closed(self, replies: list[Any], items: list[Sent], at: int) -> None:
        """Raise what the batch's state (``replies[at]``) means, if anything; ``replies[0]`` is
        CLIENT REPLY ON's."""
        if isinstance(replies[0], Exception):  # refused: the connection is out of step
            raise self._failed_with(ledger_error(replies[0], self._ledger.url,
                                                 "the step records"))
        if isinstance(replies[at], SLOT_MOVED):  # a failover: the next connection is elsewhere
            self._lost(replies[at])
        error, record = batch_error(replies[at], items, self._ledger.url)
        if error is None:
            return
        if (skipped_after_refusal(replies[at], len(items)) or record is None
                or not record[5]):
            # Believed recorded, and not: records after it were skipped, or it was sent
            # without waiting or held, and its sender went on (whoever reads it is not its
            # sender), or the batch as a whole is of unknown fate.
            raise self._failed_with(error)
        raise error  # the last record, its sender waiting for it: its refusal, to handle

    # ---- sync -------------------------------------------------------------------------------
    def _take(self) -> bool:
        # At "async" every record goes over this connection, in order: wait for it (so too
        # while records sent at "async" are unacknowledged or held, after a switch to "sync").
        return self._lock.acquire(blocking=self.pipelined or bool(self._pending.items)
                                  or bool(self._held) or not self._pending.waited)

    def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Send a script and wait for its reply (after every record sent or held before it)."""
        if not self._enabled or not self._take():
            return self._ledger.script(name, keys, args)
        try:
            self._check_failed()
            # Held records go first, in the write of the round trip that closes their batch.
            quiet = self._held_out()
            if self._pending.items:  # the barrier and this record: one round trip
                reply = self._call_after_batch(name, keys, args, quiet=quiet)
                if reply is not _SENT_AGAIN:
                    return reply
            self._drain()
            sha, source = self._ledger._scripts[name].sha, self._ledger._scripts[name].script
            commands: list[tuple[Any, ...]] = [("EVALSHA", sha, len(keys), *keys, *args)]
            if self._ledger.wait_replicas:  # on this connection: WAIT counts its writes
                commands.append(self._ledger.wait_command())

            def send() -> list[Any]:
                conn = self._connection()
                replies = exchange(conn, commands)  # the record and its WAIT: one round trip
                if isinstance(replies[0], NoScriptError):  # a restarted Redis forgot its scripts
                    exchange(conn, [("SCRIPT", "LOAD", source)])
                    replies = exchange(conn, commands)
                if isinstance(replies[0], SLOT_MOVED):  # not run: the slot is elsewhere now
                    raise replies[0]
                return replies

            replies = self._retry().call_with_retry(send, self._lost)
            if isinstance(replies[0], Exception):
                raise replies[0]
            if self._ledger.wait_replicas:
                self._ledger.check_replicated(replies[1], f"the {name} script")
            return replies[0]
        except redis.RedisError as e:
            raise ledger_error(e, self._ledger.url, f"the {name} script") from e
        finally:
            self._lock.release()

    def _call_after_batch(self, name: str, keys: list[str], args: list[Any],
                          after: list[tuple[Any, ...]] = (),  # type: ignore[assignment]
                          quiet: list[tuple[Any, ...]] = ()  # type: ignore[assignment]
                          ) -> Any:
        pending, conn = self._pending, self._conn
        items = list(pending.items)
        pending.clear()
        commands = [_REPLY_ON, self._acknowledged(name, keys, args, "s", len(items) + 1),
                    *self._close_batch(conn, "s", len(items))[1:], *after]
        if self._ledger.wait_replicas:
            commands.append(self._ledger.wait_command())
        try:
            replies = self._round_trip(conn, quiet, commands)
            start = None if isinstance(replies[0], Exception) else not_run_from(replies[2],
                                                                                len(items))
            if start is not None:  # this record was skipped too: sent as usual after them
                items = self._applied_head(replies, items, start, 2)
                self._closed(quiet_exchange(conn, *self._again(conn, items, "s")), items, 1)
                return _SENT_AGAIN
        except redis.RedisError as e:
            self._lost(e)  # replies unread: the connection is out of step
            raise self._failed_with(ledger_error(e, self._ledger.url, "the step records")) from e
        finally:
            pending.waited = True
        return self._after_batch_call(name, replies, items, len(after))

    def _after_batch_call(self, name: str, replies: list[Any], items: list[Sent],
                          n_after: int = 0) -> Any:
        self._closed(replies, items, 2)  # replies[1] is this record's: skipped if the batch failed
        if n_after:  # last_call: this record's reply and those after it, errors in place
            return [replies[1], *replies[len(replies) - n_after:]]
        reply = replies[1]
        if isinstance(reply, Exception):
            raise ledger_error(reply, self._ledger.url, f"the {name} script")
        if self._ledger.wait_replicas:
            self._ledger.check_replicated(replies[-1], f"the {name} script")
        return reply

    def _one_trip(self, items: list[Sent]) -> bool:
        """Whether the last record may go in the round trip that acknowledges ``items``: it
        runs in Redis only if all of them were applied, so none may still be refused here."""
        return (bool(items) and self._enabled and not self._ledger.cluster
                and not self._ledger.wait_replicas and bool(self._ledger._replies_off)
                and not any(judged_here(r) for r in items))

    def last_call(self, name: str, keys: list[str], args: list[Any],
                  after: list[tuple[Any, ...]]) -> Any:
        """The session's last record (the run's finish) and ``after`` (commands on other keys:
        the runs index), in the round trip that acknowledges every record sent before it: it
        is applied only if they all were. Returns the list of their replies (an error reply in
        its place, not raised), or :data:`NOT_HERE` when that cannot be (nothing to
        acknowledge, a reply to judge here first, a cluster, replicas to wait for): the caller
        then waits for :meth:`barrier` and sends it as usual. A refused record before it, or
        a lost connection, raises as :meth:`barrier` would."""
        if self._apending.items or self._aheld:
            return NOT_HERE
        with self._lock:
            self._check_failed()
            if not self._one_trip([*self._pending.items, *self._held]):
                return NOT_HERE
            quiet = self._held_out()
            reply = self._call_after_batch(name, keys, args, after, quiet)
            return NOT_HERE if reply is _SENT_AGAIN else reply

    def _lost(self, _error: BaseException) -> None:
        """The connection failed or its node no longer owns the slot: on a cluster, re-read the
        slot map, and take the next connection from the slot's owner then."""
        if self._conn is not None:
            self._conn.disconnect()
        if self._route_key is not None and self._ledger.cluster:
            self._release()
            refresh_slots(as_cluster(self._ledger.redis))

    def _connection(self) -> Any:
        if self._conn is None:
            if self._route_key is not None and self._ledger.cluster:
                self._conn, self._pool = owner_connection(as_cluster(self._ledger.redis),
                                                          self._route_key)
            else:
                self._pool = self._ledger.redis.connection_pool
                self._conn = self._pool.get_connection()
        return self._conn

    def _release(self) -> None:
        if self._conn is not None:
            self._pool.release(self._conn)
            self._conn = self._pool = None

    def send(self, name: str, keys: list[str], args: list[Any], on_reply: OnReply,
             defer: bool = False, *, expect: str | None = None, hold: bool = False) -> None:
        """Write a record to the socket and return. At ``sync`` (or where replies cannot be
        switched off) this is :meth:`call` and ``on_reply`` gets the reply, unless ``defer``:
        a write that needs no acknowledgement of its own even at ``sync``, because the next
        acknowledged call on this connection (or the end of the run) reads it.

        ``expect``: None (default): the script's reply is kept, and ``on_reply`` gets it at
        the next barrier (its exception is raised there); only an error reply (a script error,
        out of memory, ...) stops the records sent after it. A reply (or first element of the
        reply): that reply means "applied as the caller expects" (the caller has already set
        what it would set) and is not kept; any other reply stops the batch, so nothing sent
        after it is applied, and ``on_reply`` gets it at the barrier.

        ``hold`` (and ``defer`` at 'sync'): the record stays in this process and goes, in
        order and wrapped like any record sent with replies off, in the same write as the next
        record, call or barrier of this connection (a write that something else always follows
        soon: a task's writes, then its superstep's checkpoint). A process killed before that
        loses it, as it loses a record not sent yet. Where replies cannot be switched off it is
        acknowledged at once, as a deferred record is."""
        held = (hold or (defer and not self.pipelined)) and self._enabled
        # Its sender reads its barrier itself only when it was deferred at 'sync'.
        record: Sent = (name, keys, args, expect, on_reply,
                        defer and not hold and not self.pipelined)
        pipelined = self.pipelined or (defer and self._enabled)
        if pipelined or held:
            _size(keys, args)  # text only: refused here, before anything is queued or written
        if (pipelined or held) and self._ledger._replies_off is None:
            self._probe()
        if not ((pipelined or held) and self._ledger._replies_off):
            on_reply(self.call(name, keys, args))
            return
        with self._lock:
            self._check_failed()
            if not held:
                self._send_quiet([record])
                return
            self._held.append(record)
            self._held_bytes += _size(keys, args)
            if self._held_over_bound(self._held):
                self._send_quiet([])

    def _held_over_bound(self, held: list[Sent]) -> bool:
        # Held and unacknowledged records count together against the bounds.
        pending, held_bytes = ((self._apending, self._aheld_bytes) if held is self._aheld
                               else (self._pending, self._held_bytes))
        if len(held) + len(pending.items) >= self._ledger.max_unacked_records:
            return True
        return pending.bytes + held_bytes >= self._ledger.max_unacked_bytes

    def _send_quiet(self, records: list[Sent]) -> None:
        """Write ``records`` (after any held ones) with replies off, in one write; the caller
        holds the lock."""
        pending = self._pending
        # In flight (before the held records leave _held: a barrier from another thread, which
        # looks without the lock, must never see neither): it waits for the lock.
        pending.waited = False
        if self._held:
            records = [*self._held, *records]
            self._held, self._held_bytes = [], 0
        try:
            conn = self._connection()
            # One write: in the kernel when it returns (sendall).
            conn.send_packed_command(pack(conn, self._quiet_commands(conn, records, "s")),
                                     check_health=False)
        except redis.RedisError as e:
            pending.clear()  # what was sent before is of unknown fate: fail closed
            pending.waited = True  # (reported here: no WAIT on a connection that lost it)
            self._lost(e)
            # The session stops: records sent before (or held, accepted as recorded) are of
            # unknown fate, and the batch's state in Redis may count some of them; a next
            # batch numbered from 1 would be skipped against it without a word.
            raise self._failed_with(ledger_error(e, self._ledger.url,
                                                 f"the {records[-1][0]} script")) from e
        if self._sent(pending, records):
            self._drain()

    def _quiet_commands(self, conn: Any, records: list[Sent], which: str
                        ) -> list[tuple[Any, ...]]:
        """The commands that send ``records`` with replies off (opening a batch if none is)."""
        pending = self._pending if which == "s" else self._apending
        commands = [] if pending.items else self._open_batch(conn)
        for seq, (name, keys, args, expect, _on_reply, _waited) in enumerate(records):
            commands += self._record(pending, conn, name, keys, args, which, expect,
                                     len(pending.items) + seq + 1)
        return commands

    def _round_trip(self, conn: Any, quiet: list[tuple[Any, ...]],
                    loud: list[tuple[Any, ...]]) -> list[Any]:
        """The round trip that closes a batch (``quiet``: held records it carries). The batch
        is already taken off the session, so a failure that is not Redis's (a record that does
        not encode, an interrupt while reading) stops the session too: their fate is unknown."""
        try:
            return (quiet_exchange(conn, quiet, loud) if quiet
                    else exchange(conn, loud, check_health=False))
        except redis.RedisError:
            raise
        except BaseException as e:
            self._lost(e)
            raise self._stopped_by(e) from e

    async def _around_trip(self, conn: Any, quiet: list[tuple[Any, ...]],
                           loud: list[tuple[Any, ...]]) -> list[Any]:
        try:
            return await (aquiet_exchange(conn, quiet, loud) if quiet
                          else aexchange(conn, loud, check_health=False))
        except (redis.RedisError, asyncio.CancelledError):
            raise  # the callers' own handlers
        except BaseException as e:
            await self._alost(e)
            raise self._stopped_by(e) from e

    def _stopped_by(self, e: BaseException) -> BaseException:
        """Stop the session because of ``e``; what to raise: a LedgerError for an error, the
        interrupt itself otherwise."""
        error = self._failed_with(LedgerError(
            f"a round trip of step records failed ({type(e).__name__}: {e}): their fate is "
            "unknown, the run stops here (a restart finds what Redis applied)"))
        return error if isinstance(e, Exception) else e

    def _applied_head(self, replies: list[Any], items: list[Sent], start: int, at: int
                      ) -> list[Sent]:
        """The batch stopped without a word at ``start`` (NOSCRIPT): the records before it
        were applied, and their kept replies (in ``replies[at]``) are handed over now; the
        rest, returned, are sent again. A head record refused here stops the session: the
        rest are never sent again."""
        if start:
            try:
                self._closed(replies, items[:start], at)
            except BaseException as e:
                raise self._failed_with(e) from None
        return items[start:]

    def _held_out(self) -> list[tuple[Any, ...]]:
        """The held records' commands (:meth:`_held_commands`), none if none are held; no
        connection to carry them stops the session, as a failed write of them would."""
        if not self._held:
            return []
        try:
            conn = self._connection()
        except redis.RedisError as e:
            self._lost(e)
            raise self._failed_with(ledger_error(e, self._ledger.url, "the step records")) from e
        return self._held_commands(conn, "s")

    async def _aheld_out(self) -> list[tuple[Any, ...]]:
        if not self._aheld:
            return []
        try:
            conn = await self._aconnection()
        except redis.RedisError as e:
            await self._alost(e)
            raise self._failed_with(ledger_error(e, self._ledger.url, "the step records")) from e
        return self._held_commands(conn, "a")

    def _held_commands(self, conn: Any, which: str) -> list[tuple[Any, ...]]:
        """Move the held records into the batch and return the commands that write them with
        replies off, for the caller's round trip to carry in its own write (one write, not
        two). The caller holds the lock; a failure of that round trip stops the session, as a
        failed write of them would."""
        pending, records = ((self._pending, self._held) if which == "s"
                            else (self._apending, self._aheld))
        # In flight before they leave the held list: a barrier from another thread, which
        # looks without the lock, must never see neither (see _send_quiet).
        pending.waited = False
        commands = self._quiet_commands(conn, records, which)  # before they count as sent
        self._sent(pending, records)
        if which == "s":
            self._held, self._held_bytes = [], 0
        else:
            self._aheld, self._aheld_bytes = [], 0
        return commands

    def _sent(self, pending: Batch, records: list[Sent]) -> bool:
        """Count ``records`` as written to ``pending``; True when past a bound (drain now)."""
        for record in records:
            pending.items.append(record)
            pending.bytes += _size(record[1], record[2])
        pending.waited = False
        return (len(pending.items) >= self._ledger.max_unacked_records
                or pending.bytes >= self._ledger.max_unacked_bytes)

    def _probe(self) -> None:
        with self._lock:
            if self._ledger._replies_off is not None:  # another thread asked meanwhile
                return
            conn = self._connection()
            try:
                self._after_probe(exchange(conn, self._probe_commands(conn)))
            except redis.RedisError as e:
                self._lost(e)
                raise ledger_error(e, self._ledger.url, "CLIENT REPLY") from e

    def barrier(self) -> None:
        """Wait until every record sent so far is acknowledged; raise the first error."""
        if self._apending.items or self._aheld:
            raise LedgerError("step records sent from asyncio are not acknowledged yet and a "
                              "synchronous barrier cannot read them: end the run with afinish "
                              "(or record this run at durability 'sync')")
        self._check_failed()
        if self._pending.items or not self._pending.waited or self._held:
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        # Held records go first, in the barrier's own write.
        quiet = self._held_out()
        pending = self._pending
        if not pending.items and pending.waited:
            return
        conn = self._conn
        items = list(pending.items)
        pending.clear()
        commands = self._close_batch(conn, "s", len(items)) if items else []
        if self._ledger.wait_replicas and not pending.waited:
            commands.append(self._ledger.wait_command())
        if not commands:
            pending.waited = True
            return
        try:
            replies = self._round_trip(conn, quiet, commands)
            start = (not_run_from(replies[1], len(items))
                     if items and not isinstance(replies[0], Exception) else None)
            if start is not None:
                items = self._applied_head(replies, items, start, 1)
                replies = quiet_exchange(conn, *self._again(conn, items, "s"))
        except redis.RedisError as e:
            self._lost(e)  # replies unread: the connection is out of step
            raise self._failed_with(ledger_error(e, self._ledger.url, "the step records")) from e
        finally:
            pending.waited = True
        if items:
            self._closed(replies, items, 1)
        if self._ledger.wait_replicas:
            self._ledger.check_replicated(replies[-1], "the step records")

    def _retry(self) -> Any:
        return self._ledger.cluster_retry()

    def close(self) -> None:
        with self._lock:
            self._held.clear()  # never sent: as if the process had stopped before them
            self._held_bytes = 0
            if self._conn is not None:
                if self._pending.items:  # replies off: never hand it to the pool like this
                    self._conn.disconnect()
                    self._pending.clear()
                self._release()

    # ---- asyncio ----------------------------------------------------------------------------
    def _alock_for(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock | None:
        if self._aloop is None:
            self._aloop, self._alock = loop, asyncio.Lock()
        return self._alock if loop is self._aloop else None

    async def acall(self, name: str, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        lock = self._alock_for(loop)
        # Another loop, or the connection busy with a concurrent task: use the client
        # (at "async", wait for it: one connection keeps the records in order).
        if not self._enabled or lock is None or (lock.locked() and not self.pipelined
                                                 and not self._apending.items
                                                 and not self._aheld
                                                 and self._apending.waited):
            return await self._ledger.ascript(name, keys, args)
        async with lock:
            scripts = self._ledger._async()[1]
            try:
                self._check_failed()
                quiet = await self._aheld_out()
                if self._apending.items:
                    reply = await self._acall_after_batch(name, keys, args, quiet=quiet)
                    if reply is not _SENT_AGAIN:
                        return reply
                await self._adrain()
                sha, source = scripts[name].sha, scripts[name].script
                commands: list[tuple[Any, ...]] = [("EVALSHA", sha, len(keys), *keys, *args)]
                if self._ledger.wait_replicas:
                    commands.append(self._ledger.wait_command())

                async def send() -> list[Any]:
                    conn = await self._aconnection()
                    replies = await aexchange(conn, commands)
                    if isinstance(replies[0], NoScriptError):
                        await aexchange(conn, [("SCRIPT", "LOAD", source)])
                        replies = await aexchange(conn, commands)
                    if isinstance(replies[0], SLOT_MOVED):
                        raise replies[0]
                    return replies

                replies = await self._ledger.acluster_retry().call_with_retry(send, self._alost)
                if isinstance(replies[0], Exception):
                    raise replies[0]
                if self._ledger.wait_replicas:
                    self._ledger.check_replicated(replies[1], f"the {name} script")
                return replies[0]
            except redis.RedisError as e:
                raise ledger_error(e, self._ledger.url, f"the {name} script") from e

    async def _acall_after_batch(self, name: str, keys: list[str], args: list[Any],
                                 after: list[tuple[Any, ...]] = (),  # type: ignore[assignment]
                                 quiet: list[tuple[Any, ...]] = ()  # type: ignore[assignment]
                                 ) -> Any:
        pending, conn = self._apending, self._aconn
        items = list(pending.items)
        pending.clear()
        commands = [_REPLY_ON, self._acknowledged(name, keys, args, "a", len(items) + 1),
                    *self._close_batch(conn, "a", len(items))[1:], *after]
        if self._ledger.wait_replicas:
            commands.append(self._ledger.wait_command())
        try:
            replies = await self._around_trip(conn, quiet, commands)
            start = None if isinstance(replies[0], Exception) else not_run_from(replies[2],
                                                                                len(items))
            if start is not None:
                items = self._applied_head(replies, items, start, 2)
                self._closed(await aquiet_exchange(conn, *self._again(conn, items, "a")),
                             items, 1)
                return _SENT_AGAIN
        except redis.RedisError as e:
            await self._alost(e)
            raise self._failed_with(ledger_error(e, self._ledger.url, "the step records")) from e
        except asyncio.CancelledError:
            await self._acancelled(items)
            raise
        finally:
            pending.waited = True
        return self._after_batch_call(name, replies, items, len(after))

    async def alast_call(self, name: str, keys: list[str], args: list[Any],
                         after: list[tuple[Any, ...]]) -> Any:
        """:meth:`last_call` for records sent from asyncio."""
        if self._pending.items or self._held or not self._pending.waited:
            return NOT_HERE
        lock = self._alock_for(asyncio.get_running_loop())
        if lock is None:
            return NOT_HERE  # abarrier says why
        async with lock:
            self._check_failed()
            if not self._one_trip([*self._apending.items, *self._aheld]):
                return NOT_HERE
            quiet = await self._aheld_out()
            reply = await self._acall_after_batch(name, keys, args, after, quiet)
            return NOT_HERE if reply is _SENT_AGAIN else reply

    async def _acancelled(self, items: list[Sent]) -> None:
        """A round trip that acknowledges ``items`` was cancelled (a task's timeout) before its
        replies were read: their fate is unknown, so the session stops; counted as
        unacknowledged, so that closing it drops the connection (its replies unread)."""
        self._failed_with(LedgerError(
            "a round trip of step records was cancelled before its replies were read: their "
            "fate is unknown, the run stops (a restart finds what Redis applied)"))
        self._apending.items.extend(items)
        if self._aconn is not None:
            await self._aconn.disconnect(nowait=True)

    async def _alost(self, _error: BaseException) -> None:
        if self._aconn is not None:
            await self._aconn.disconnect()
        if self._route_key is not None and self._ledger.cluster:
            self._arelease()
            await arefresh_slots(self._ledger._async()[0])  # type: ignore[arg-type]

    async def _aconnection(self) -> Any:
        if self._aconn is None:
            client: Any = self._ledger._async()[0]
            if self._route_key is not None and self._ledger.cluster:
                self._aconn, self._anode = await aowner_connection(client, self._route_key)
            else:
                self._aconn = await client.connection_pool.get_connection()
        return self._aconn

    def _arelease(self) -> None:
        if self._aconn is not None and self._anode is not None:
            arelease(self._anode, self._aconn)
        self._aconn = self._anode = None

    async def asend(self, name: str, keys: list[str], args: list[Any], on_reply: OnReply,
                    defer: bool = False, *, expect: str | None = None, hold: bool = False
                    ) -> None:
        loop = asyncio.get_running_loop()
        lock = self._alock_for(loop)
        held = (hold or (defer and not self.pipelined)) and self._enabled
        # Its sender reads its barrier itself only when it was deferred at 'sync'.
        record: Sent = (name, keys, args, expect, on_reply,
                        defer and not hold and not self.pipelined)
        pipelined = self.pipelined or (defer and self._enabled)
        if pipelined or held:
            _size(keys, args)  # text only (see send)
        if not ((pipelined or held) and self.opened_async) or lock is None:
            on_reply(await self.acall(name, keys, args))
            return
        if self._ledger._replies_off is None:
            await self._aprobe(lock)
        if not self._ledger._replies_off:
            on_reply(await self.acall(name, keys, args))
            return
        async with lock:  # held under the lock: a call in flight never takes it half-way
            self._check_failed()
            if not held:
                await self._asend_quiet([record])
                return
            self._aheld.append(record)
            self._aheld_bytes += _size(keys, args)
            if self._held_over_bound(self._aheld):
                await self._asend_quiet([])

    async def _asend_quiet(self, records: list[Sent]) -> None:
        pending = self._apending
        pending.waited = False  # in flight (see _send_quiet)
        if self._aheld:
            records = [*self._aheld, *records]
            self._aheld, self._aheld_bytes = [], 0
        try:
            conn = await self._aconnection()
            if not conn.is_connected:
                await conn.connect()
            # No bytes left in asyncio's buffer when a send returns (drain waits for an
            # empty buffer): in the kernel, as with the synchronous sendall. Not over TLS
            # (docs/durability.md says why).
            conn._writer.transport.set_write_buffer_limits(high=0)
            await asend_packed(conn, pack(conn, self._quiet_commands(conn, records, "a")),
                               check_health=False)
        except redis.RedisError as e:
            pending.clear()
            pending.waited = True
            await self._alost(e)  # the session stops (see _send_quiet)
            raise self._failed_with(ledger_error(e, self._ledger.url,
                                                 f"the {records[-1][0]} script")) from e
        except asyncio.CancelledError:
            # Cancelled mid-write: these records' fate is unknown and the connection may hold
            # half a command. The session stops; counted as unacknowledged, so that closing
            # it drops the connection instead of handing it back to the pool.
            self._failed_with(LedgerError("a write of step records was cancelled before it "
                                          "completed: their fate is unknown, the run stops"))
            pending.items.extend(records)
            raise
        if self._sent(pending, records):
            await self._adrain()

    async def _aprobe(self, lock: asyncio.Lock) -> None:
        async with lock:
            if self._ledger._replies_off is not None:
                return
            conn = await self._aconnection()
            try:
                self._after_probe(await aexchange(conn, self._probe_commands(conn)))
            except redis.RedisError as e:
                await self._alost(e)
                raise ledger_error(e, self._ledger.url, "CLIENT REPLY") from e

    async def abarrier(self) -> None:
        self._check_failed()
        if self._pending.items or not self._pending.waited or self._held:  # from a thread
            with self._lock:
                self._drain()
        if not (self._apending.items or not self._apending.waited or self._aheld):
            return
        lock = self._alock_for(asyncio.get_running_loop())
        if lock is None:
            raise LedgerError("step records were sent from another event loop and cannot be "
                              "acknowledged from this one: end the run on the loop that "
                              "recorded its steps")
        async with lock:
            await self._adrain()

    async def _adrain(self) -> None:
        quiet = await self._aheld_out()
        pending = self._apending
        if not pending.items and pending.waited:
            return
        conn = self._aconn
        items = list(pending.items)
        pending.clear()
        commands = self._close_batch(conn, "a", len(items)) if items else []
        if self._ledger.wait_replicas and not pending.waited:
            commands.append(self._ledger.wait_command())
        if not commands:
            pending.waited = True
            return
        try:
            replies = await self._around_trip(conn, quiet, commands)
            start = (not_run_from(replies[1], len(items))
                     if items and not isinstance(replies[0], Exception) else None)
            if start is not None:
                items = self._applied_head(replies, items, start, 1)
                replies = await aquiet_exchange(conn, *self._again(conn, items, "a"))
        except redis.RedisError as e:
            await self._alost(e)
            raise self._failed_with(ledger_error(e, self._ledger.url, "the step records")) from e
        except asyncio.CancelledError:
            await self._acancelled(items)
            raise
        finally:
            pending.waited = True
        if items:
            self._closed(replies, items, 1)
        if self._ledger.wait_replicas:
            self._ledger.check_replicated(replies[-1], "the step records")

    async def aclose(self) -> None:
        self._aheld.clear()
        self._aheld_bytes = 0
        if self._aconn is not None and self._aloop is asyncio.get_running_loop():
            if self._apending.items:
                await self._aconn.disconnect()
                self._apending.clear()
            if self._anode is not None:
                self._arelease()
            else:
                client: aredis.Redis = self._ledger._async()[0]
                await client.connection_pool.release(self._aconn)
        self._aconn = self._anode = None
        self.close()
