"""Records sent with Redis's replies switched off, and the state the barrier reads instead.

Why replies are off: a record sent without waiting leaves its reply unread until the next
barrier. If the process is killed then, its socket still holds unread replies, and the kernel
closes a socket with unread data with a reset (RST): Redis drops the client and every command it
had not read yet. Measured: of 3,000 records written before a SIGKILL, 955–2,025 were applied
over TCP. With ``CLIENT REPLY OFF`` Redis writes nothing back, the dying socket closes with a
FIN after its last byte, and Redis applies everything up to the end of the stream (3,000 of
3,000, every time).

Since no reply comes back, each record sent that way runs inside :func:`wrapped` (a Lua wrapper
around its script) that keeps, in a small hash in the run's slot (:func:`state_key`), the number
of the last record applied in the batch (``n``) and the first one whose script answered
something other than expected (``f``, with its reply or error). A record runs only if every
record before it in the batch did (``n`` is its number minus one and nothing failed): a refused
record (out of memory, a script error, a verdict such as fenced out) stops the batch, so what
Redis holds is always a prefix. The barrier turns replies back on and reads that hash
(:data:`BATCH_STATE`) in the same round trip; :func:`batch_error` makes of it the error the
refused record's own reply would have raised.

Records go as EVALSHA of the wrapped script, loaded (``SCRIPT LOAD``, no reply either) once per
socket: Redis hashes an EVAL's whole body on every call. Scripts flushed since (or a Redis that
restarted behind the same socket) make a record fail with NOSCRIPT without a word; nothing
after it runs, and the barrier sends those records again with EVAL (:func:`not_run_from`) and
loads the scripts again in the next batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from ._connect import ledger_error
from ._errors import LedgerError
from ._nodes import asend_packed, pack

__all__ = ["BATCH_STATE", "KEEP_REPLY", "KEEP_UNLESS", "Batch", "Sent", "aquiet_exchange",
           "batch_error", "client_name", "judged_here", "kept", "no_verdict", "not_run_from",
           "owner_connections", "quiet_exchange", "skipped_after_refusal", "state_key", "wait_until_gone", "wrapped",
           "wrapped_acknowledged", "wrapped_sha"]

log = logging.getLogger("agentledger")

OnReply = Callable[[Any], None]

# The batch's records are numbered from 1; the wrapper's own key and arguments go last in KEYS
# and ARGV and are removed before the script's body runs, so the body sees its own unchanged.
# KEYS[#KEYS] the batch's state hash; ARGV[#ARGV - 1] this record's number in the batch,
# ARGV[#ARGV] the reply (or first element of a table reply) that means "applied as expected".
_PROLOGUE = """
local __state = table.remove(KEYS)
local __expect = table.remove(ARGV)
local __seq = tonumber(table.remove(ARGV))
local __st = redis.call('HMGET', __state, 'n', 'f')
local __n, __failed = tonumber(__st[1]) or 0, __st[2]
"""

# A reply as text that says its types, as Redis would convert it: i(nteger) s(tring) n(il)
# o(status) e(rror) l(ist: its elements as <length>:<text>).
_ENCODE = """
local function __enc(x)
  local t = type(x)
  if t == 'number' then return 'i' .. string.format('%d', x) end
  if t == 'string' then return 's' .. x end
  if t == 'boolean' then return x and 'i1' or 'n' end
  if t == 'table' then
    if x.ok then return 'o' .. x.ok end
    if x.err then return 'e' .. x.err end
    local parts = {}
    for i = 1, #x do
      local e = __enc(x[i])
      parts[i] = #e .. ':' .. e
    end
    return 'l' .. table.concat(parts)
  end
  return 'n'
end
"""

KEEP_REPLY = "*"  # ARGV "expect" of a record whose reply is kept for the barrier
# ARGV "expect" prefix: the reply is kept for the barrier unless its tag (the reply, or its
# first element) is what follows the prefix; that reply is a refusal and stops the batch.
KEEP_UNLESS = "*!"

_WRAPPED = _PROLOGUE + _ENCODE + """
if __n ~= __seq - 1 or __failed then return end
local function __body()
__SOURCE__
end
local __ok, __r = pcall(__body)
local __error = not __ok or (type(__r) == 'table' and __r.err ~= nil)
if not __error then
  local __tag = __r
  if type(__r) == 'table' then __tag = __r[1] or __r.ok end
  local __keep = __expect == '*'
  if string.sub(__expect, 1, 2) == '*!' then
    __keep = __tag == nil or tostring(__tag) ~= string.sub(__expect, 3)
  end
  if __keep then  -- the reply is kept for the barrier
    redis.call('HSET', __state, 'n', __seq, 'p' .. __seq, __enc(__r))
    return
  end
  if __tag ~= nil and tostring(__tag) == __expect then
    redis.call('HSET', __state, 'n', __seq)
    return
  end
end
local __fields = {'f', __seq}
if __error then
  __fields[3] = 'e'
  __fields[4] = type(__r) == 'table' and (__r.err or '?') or tostring(__r)
else
  __fields[3] = 'v'
  __fields[4] = __enc(__r)
end
-- Out of memory this write is refused too: the barrier then finds n short and asks why.
pcall(redis.call, 'HSET', __state, unpack(__fields))
"""

# An acknowledged record right after a batch (one round trip with the barrier): it runs only if
# the whole batch did, and its reply is read as usual.
_WRAPPED_ACKNOWLEDGED = _PROLOGUE + """
if __n ~= __seq - 1 or __failed then
  return redis.error_reply('AGENTLEDGER_SKIPPED a record sent before this one was not applied')
end
local function __body()
__SOURCE__
end
return __body()
"""

# KEYS[1] the batch's state hash; ARGV[1] how many records the batch sent
# -> {field, value, ...} of the state, then '' or, if fewer were applied and no record said why,
#    the error a write gets now (out of memory, read-only replica, ...). The state is deleted.
BATCH_STATE = """
local state = redis.call('HGETALL', KEYS[1])
local n, failed = 0, false
for i = 1, #state, 2 do
  if state[i] == 'n' then n = tonumber(state[i + 1]) end
  if state[i] == 'f' then failed = true end
end
local why = ''
if n < tonumber(ARGV[1]) and not failed then
  -- Before any other write: once a script has written, Redis no longer refuses it for memory.
  local ok, e = pcall(redis.call, 'HSET', KEYS[1], 'probe', '1')
  if not ok then why = type(e) == 'table' and e.err or tostring(e) end
end
redis.call('DEL', KEYS[1])
state[#state + 1] = why
return state
"""


@functools.lru_cache(maxsize=64)
def wrapped(source: str) -> str:
    """``source`` as a record sent with replies off (see the module's docstring)."""
    return _WRAPPED.replace("__SOURCE__", source, 1)


@functools.lru_cache(maxsize=64)
def wrapped_sha(source: str) -> str:
    """The SHA1 of :func:`wrapped` ``(source)``: records go as EVALSHA (Redis hashes an EVAL's
    whole body on every call), the script loaded once per batch."""
    return hashlib.sha1(wrapped(source).encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def wrapped_acknowledged(source: str) -> str:
    return _WRAPPED_ACKNOWLEDGED.replace("__SOURCE__", source, 1)


def state_key(base: str, fence: int, which: str) -> str:
    """The state hash of one session's batches (``which``: its sync or asyncio connection), in
    the run's slot (``base`` carries the hash tag)."""
    return f"{base}:unacked:{fence}:{which}"


def client_name(owner: str) -> str:
    """The name a session's step connection carries while records are unacknowledged (Redis
    allows only the characters '!' to '~' in a name)."""
    return "agentledger:" + "".join(c if "!" <= c <= "~" else "?" for c in owner)


# A record sent: script name, keys, arguments, the reply expected (None: kept for the
# barrier), what to do with a reply, and whether its sender waits for its barrier itself (a
# record deferred at 'sync'; False: sent without waiting, or held).
Sent = tuple[str, list[str], list[Any], str | None, OnReply, bool]


class Batch:
    """Records sent on one connection with replies off since the last barrier."""

    __slots__ = ("bytes", "items", "loaded", "loaded_on", "waited")

    def __init__(self) -> None:
        self.items: list[Sent] = []
        # Scripts loaded (SCRIPT LOAD) over the socket ``loaded_on``: once per socket, not per
        # batch; a script flushed since makes its record fail with NOSCRIPT, and the barrier
        # sends it again (not_run_from) and forgets what was loaded.
        self.loaded: set[str] = set()
        self.loaded_on: object = None
        self.bytes = 0
        self.waited = True  # False: writes since the last WAIT (durability "replicated")

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0

    def loaded_over(self, conn: Any) -> set[str]:
        """The scripts loaded over ``conn``'s socket (none for a socket new since)."""
        sock = getattr(conn, "_sock", None) or getattr(conn, "_writer", None)
        if sock is None or sock is not self.loaded_on:
            self.loaded.clear()
            self.loaded_on = sock
        return self.loaded


def kept(expect: str | None) -> bool:
    """Whether a record sent with this ``expect`` has its reply kept for the barrier."""
    return expect is None or expect.startswith(KEEP_UNLESS)


def no_verdict(_reply: Any) -> None:
    """The ``on_reply`` of a record whose reply asks nothing of the caller (only an error
    reply, which stops the batch, would)."""


def judged_here(record: Sent) -> bool:
    """Whether ``record``'s kept reply may still refuse it at the barrier, in this process
    (its ``on_reply`` raising): nothing that depends on it being applied may be sent in the
    same round trip as that barrier. A record whose refusal Redis sees (``expect``) or whose
    reply asks nothing (:func:`no_verdict`) is judged by Redis alone."""
    expect, on_reply = record[3], record[4]
    return expect is None and on_reply is not no_verdict


def _decode(text: bytes) -> Any:
    """A reply as ``__enc`` wrote it, as redis-py would have returned it."""
    kind, value = text[:1], text[1:]
    if kind == b"i":
        return int(value)
    if kind == b"n":
        return None
    if kind == b"e":
        return redis.ResponseError(value.decode("utf-8", "replace"))
    if kind == b"l":
        items, at = [], 0
        while at < len(value):
            colon = value.index(b":", at)
            end = colon + 1 + int(value[at:colon])
            items.append(_decode(value[colon + 1:end]))
            at = end
        return items
    return value  # s, o: as redis-py returns strings and statuses (bytes)


def _state(reply: list[Any]) -> dict[bytes, bytes]:
    return dict(zip(reply[:-1:2], reply[1:-1:2], strict=True))


def not_run_from(reply: Any, sent: int) -> int | None:
    """Where the batch stopped without a word: a record whose script did not run at all
    (``NOSCRIPT``: the scripts were flushed after the batch loaded its own) and writes are
    allowed. Nothing from there was applied, so those records may be sent again. None when the
    batch was applied whole, or stopped for a reason."""
    if isinstance(reply, BaseException) or reply[-1]:
        return None
    state = _state(reply)
    applied = int(state.get(b"n", 0))
    return None if b"f" in state or applied >= sent else applied


def skipped_after_refusal(reply: Any, sent: int) -> int:
    """How many records sent after a refused one were not applied (all of them if the state
    could not be read): the session believed them recorded, so it cannot go on."""
    if isinstance(reply, BaseException):
        return sent
    state = _state(reply)
    if b"f" in state:
        return sent - int(state[b"f"])
    return max(0, sent - int(state.get(b"n", 0)) - 1)


def batch_error(reply: Any, items: list[Sent], url: str | None
                ) -> tuple[BaseException | None, Sent | None]:
    """The error the batch's state (:data:`BATCH_STATE`'s reply) means, or None if every record
    was applied as expected, and the record it is about (None: the batch as a whole). A refused
    record's ``on_reply`` gets the reply its script gave and raises what it would have raised
    had the reply been read at once."""
    if isinstance(reply, BaseException):
        return ledger_error(reply, url, "the step records"), None
    why = reply[-1]
    state = _state(reply)
    applied = int(state.get(b"n", 0))
    sent = len(items)
    failed = int(state.get(b"f", 0))
    for seq, record in enumerate(items[:applied], 1):
        if kept(record[3]):  # its reply was kept: read now, as it was before replies went off
            try:
                record[4](_decode(state[b"p%d" % seq]))
            except Exception as e:
                return e, record
    if failed:
        record = items[failed - 1]
        name, on_reply = record[0], record[4]
        if b"e" in state:
            return ledger_error(redis.ResponseError(state[b"e"].decode("utf-8", "replace")),
                                url, f"the {name} script"), record
        value = _decode(state[b"v"])
        try:
            on_reply(value)
        except Exception as e:  # the record's own verdict (fenced out, ...)
            return e, record
        tag = value[0] if isinstance(value, list) and value else value
        return LedgerError(f"the {name} script answered {tag!r}; the {sent - failed} step "
                           "records sent after it were not applied, so this run stops here "
                           "(it resumes from its records)"), record
    if applied < sent:
        name = items[applied][0]
        text = why.decode("utf-8", "replace") if why else (
            "no reason recorded: its script was not run, twice (flushed scripts?)")
        error = ledger_error(redis.ResponseError(text), url, f"the {name} script")
        return LedgerError(f"{error} ({sent - applied} of {sent} step records sent without "
                           "waiting were not applied, from that one on; the run stops here "
                           "and resumes from its records)"), items[applied]
    return None, None


def quiet_exchange(conn: Any, quiet: list[tuple[Any, ...]], loud: list[tuple[Any, ...]]
                   ) -> list[Any]:
    """Send ``quiet`` (starting with CLIENT REPLY OFF: no replies) and ``loud`` (starting with
    CLIENT REPLY ON) in one write, and read the replies of ``loud`` (error replies returned in
    their place)."""
    conn.send_packed_command(pack(conn, [*quiet, *loud]), check_health=False)
    replies: list[Any] = []
    for _ in loud:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as e:
            replies.append(e)
    return replies


async def aquiet_exchange(conn: Any, quiet: list[tuple[Any, ...]],
                          loud: list[tuple[Any, ...]]) -> list[Any]:
    await asend_packed(conn, pack(conn, [*quiet, *loud]), check_health=False)
    replies: list[Any] = []
    for _ in loud:
        try:
            replies.append(await conn.read_response())
        except redis.ResponseError as e:
            replies.append(e)
    return replies


def owner_connections(client_list: list[dict[str, Any]], owner: str) -> int:
    """How many of the listed clients carry ``owner``'s step-connection name."""
    name = client_name(owner)
    return sum(1 for c in client_list if c.get("name") == name)


def wait_until_gone(list_clients: Callable[[], list[dict[str, Any]]], owner: str,
                    timeout_s: float, run_id: str) -> None:
    """Before taking over a run from a dead or lapsed owner: wait (at most ``timeout_s``) until
    Redis has freed that owner's step connections, so that it has read and applied every record
    the owner handed to the kernel before it died (applied after the takeover, they would be
    refused as fenced out). Where ``CLIENT LIST`` is denied, or the wait times out, warn and
    go on: those records may then be re-run (with their keys)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            left = owner_connections(list_clients(), owner)
        except redis.ResponseError as e:
            log.warning("agentledger: could not list Redis clients (%s) before taking over run "
                        "%r: records its previous owner sent without waiting may not be "
                        "applied yet, and would be re-run", e, run_id)
            return
        if not left:
            return
        if time.monotonic() >= deadline:
            log.warning("agentledger: run %r: Redis still holds a connection of its previous "
                        "owner %s after %.1f s; taking the run over anyway (records it sent "
                        "without waiting and Redis has not applied yet would be re-run)",
                        run_id, owner, timeout_s)
            return
        time.sleep(0.01)
