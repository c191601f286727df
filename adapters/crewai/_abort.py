"""Carry an agentledger error through CrewAI's layers without being retried or swallowed.

CrewAI swallows exceptions raised by hooks and retries a failed task (``max_retry_limit``);
only ``HookAborted`` passes through both. A ledger error (Redis unreachable, a person's
decision pending, a replay that does not match) is wrapped in :class:`LedgerAbort` where it
arises, and the handler's kickoff unwraps it, so the caller sees the original error.
"""

from __future__ import annotations

from agentledger import LedgerError
from crewai.hooks.dispatch import HookAborted

__all__ = ["LedgerAbort", "unwrap"]


class LedgerAbort(HookAborted):
    """A ledger error on its way out of a kickoff."""

    def __init__(self, error: LedgerError) -> None:
        super().__init__(reason=f"agentledger: {error}", source="agentledger")
        self.error = error


def unwrap(exc: BaseException) -> LedgerError | None:
    """The ledger error behind ``exc`` (itself, a LedgerAbort, or one in its cause chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, LedgerAbort):
            return current.error
        if isinstance(current, LedgerError):
            return current
        current = current.__cause__ or current.__context__
    return None
