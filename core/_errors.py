"""Every error agentledger raises, under one base class.

Connecting can raise (each with a one-line message that never contains a password):

- :class:`RedisAuthError`: wrong user or password, or an ACL user lacking a command the ledger
  needs. Reported at once, never retried.
- :class:`RedisConfigError`: the server cannot hold a ledger as configured or the URL does not
  fit it: an evicting ``maxmemory-policy`` (``allkeys-*``), a ``rediss://`` URL to a plain port,
  a ``redis+cluster://`` URL to a node not in cluster mode, a database index out of range.
- :class:`LedgerUnavailableError`: nothing answered within the timeouts (a dead host or cluster
  node, a stopped server); the call failed closed.
"""

from __future__ import annotations

from typing import Any

from ._suggest import command

__all__ = [
    "ApprovalPending",
    "CorruptRecordError",
    "EmbeddedRedisError",
    "FencedOutError",
    "InDoubtStepError",
    "LedgerError",
    "LedgerUnavailableError",
    "NoRunContextError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "RecordedStepError",
    "RedisAuthError",
    "RedisConfigError",
    "RunBusyError",
    "StepRejected",
    "ThreadScopeError",
    "UnknownSchemaVersionError",
    "UnrecordableValueError",
    "UnsupportedTypeError",
]


class LedgerError(Exception):
    """Base class of every agentledger error."""


class LedgerUnavailableError(LedgerError):
    """Redis could not be reached. The ledger fails closed: no unrecorded step runs."""


class RedisAuthError(LedgerError):
    """Redis refused the credentials, or the ACL user may not run a command the ledger needs."""


class RedisConfigError(LedgerError):
    """The Redis server, or the URL used to reach it, cannot hold a ledger as configured."""


class EmbeddedRedisError(LedgerUnavailableError):
    """The embedded Redis cannot be used: no binary, a broken one, or a socket or folder that is
    not the user's own (refused before any record is written)."""


class CorruptRecordError(LedgerError):
    """A record read from Redis is not valid JSON or does not match its schema."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"corrupt record at {key!r}: {detail}")
        self.key = key
        self.detail = detail


class UnknownSchemaVersionError(CorruptRecordError):
    """A record was written by a newer agentledger than this one."""

    def __init__(self, key: str, version: object, supported: int) -> None:
        LedgerError.__init__(
            self,
            f"record at {key!r} has schema version {version!r}; this agentledger reads "
            f"versions up to {supported}. Upgrade agentledger to read it.",
        )
        self.key = key
        self.detail = f"schema version {version!r}"
        self.version = version


class PayloadTooLargeError(LedgerError):
    """A value to record is larger than the ledger's ``max_payload_bytes``."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} is {size} bytes encoded, over the limit of {limit} bytes "
            "(raise Ledger(max_payload_bytes=...) or return something smaller)"
        )
        self.size = size
        self.limit = limit


class UnsupportedTypeError(LedgerError, TypeError):
    """A value has a type the codec's allow-list does not know."""


class UnrecordableValueError(LedgerError, ValueError):
    """A value cannot be recorded as JSON: it nests too deep (or contains itself), or encoding
    it failed. A step whose result is such a value records this error as its outcome."""


class NoRunContextError(LedgerError):
    """A step was called where no run is in context while a run is active in this process:
    most likely from a thread the run's context did not reach. It would not be recorded."""

    def __init__(self, step: str, run_id: str) -> None:
        super().__init__(
            f"step {step!r} was called with no run in its context while run {run_id!r} is "
            "active in this process (a thread the run's context did not reach?), so it would "
            "not be recorded. Submit the work as agentledger.in_thread(fn) (it carries the "
            "run and a scope of its own), or wrap the call in agentledger.outside_run() to "
            "call it unrecorded on purpose."
        )
        self.step = step
        self.run_id = run_id


class FencedOutError(LedgerError):
    """This process lost the run's lease to another one; its writes are refused."""


class RunBusyError(LedgerError):
    """Another live process holds the run's lease."""

    def __init__(self, run_id: str, owner: str, remaining_ms: int, hint: str = "") -> None:
        hint = hint or "pass on_busy='wait' to wait for it, or wait until the lease expires"
        super().__init__(f"run {run_id!r} is held by {owner!r} for another {remaining_ms} ms "
                         f"({hint})")
        self.run_id = run_id
        self.owner = owner
        self.remaining_ms = remaining_ms


class NonDeterminismError(LedgerError):
    """A replayed call does not match the call recorded under the same step key."""

    def __init__(self, key: str, recorded: str, new: str) -> None:
        super().__init__(
            f"step {key!r} was recorded for a different call.\n"
            f"  recorded: {recorded}\n  now:      {new}\n"
            "The code or its inputs changed since the run started. Start a new run id, "
            "or open the run with on_mismatch='replay' to accept the recorded result."
        )
        self.key = key
        self.recorded = recorded
        self.new = new


class ThreadScopeError(NonDeterminismError):
    """A step numbered from a thread that did not enter its scope replays a different call:
    threads racing in one scope take occurrence numbers in timing order, so this may be
    another thread's record. Raised whatever ``on_mismatch`` says."""

    def __init__(self, key: str, recorded: str, new: str) -> None:
        LedgerError.__init__(
            self,
            f"step {key!r} was recorded for a different call, and this call was numbered in "
            "a thread that did not enter its scope, where several threads take numbers in "
            "whatever order they run: the record may be another thread's, so it is not "
            f"replayed.\n  recorded: {recorded}\n  now:      {new}\n"
            "Give each thread a scope of its own: submit agentledger.in_thread(fn), or wrap "
            "the thread's work in agentledger.scope(name) with a name fixed by its input."
        )
        self.key = key
        self.recorded = recorded
        self.new = new


class InDoubtStepError(LedgerError):
    """A step started before a crash and recorded no outcome; its policy is to fail the run."""

    def __init__(self, key: str, attempts: int, idempotency_key: str) -> None:
        super().__init__(
            f"step {key!r} is in doubt: attempt {attempts} started and recorded no outcome, "
            "so nobody knows whether its side effect happened. Its in-doubt policy is 'fail'. "
            f"Check the effect (idempotency key {idempotency_key!r}), then resolve it with "
            "`agentledger approve RUN_ID STEP` (it did not happen: re-run it), "
            "`--payload JSON` (it happened: JSON is its result) or `--reject` (fail it)."
        )
        self.key = key
        self.attempts = attempts
        self.idempotency_key = idempotency_key


class RecordedStepError(LedgerError):
    """A recorded failure whose exception type is not on the codec's allow-list."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class ApprovalPending(LedgerError):
    """Raised inside a run when a step waits for a person; the run stops, holding nothing."""

    def __init__(self, run_id: str, step_key: str, payload: Any = None) -> None:
        super().__init__(
            f"run {run_id!r} waits for a decision on step {step_key!r} "
            f"(`{command('approve', positional=(run_id, step_key))}`)"
        )
        self.run_id = run_id
        self.step_key = step_key
        self.payload = payload



class StepRejected(LedgerError):
    """A person rejected an approval or an in-doubt step; replayed as this error."""
