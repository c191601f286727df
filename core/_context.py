"""Context variables: the active run session, the current scope and the step being executed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._session import RunSession, StepStart

__all__ = ["current_idempotency_key", "current_run", "current_scope", "restart_numbering",
           "scope"]

_session: ContextVar[RunSession | None] = ContextVar("agentledger_session", default=None)
_scope: ContextVar[str] = ContextVar("agentledger_scope", default="")
_step: ContextVar[StepStart | None] = ContextVar("agentledger_step", default=None)
# Occurrence counters of step keys; None: the session's own. See restart_numbering().
_counters: ContextVar[dict[str, int] | None] = ContextVar("agentledger_counters", default=None)


def current_run() -> RunSession | None:
    """The run session active in this context, or None outside a run."""
    return _session.get()


def current_scope() -> str:
    return _scope.get()


def current_idempotency_key() -> str | None:
    """The idempotency key of the step being executed: the same on every attempt of that
    step, so a tool can pass it to a payment or mail API. None outside a step."""
    step = _step.get()
    return step.idempotency_key if step is not None else None


@contextmanager
def scope(name: str) -> Iterator[str]:
    """Nest the steps called inside under ``name`` (joined to the current scope with '/').
    Use it where the order of calls between scopes is not fixed (threads, tasks)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a scope name must be a non-empty str")
    outer = _scope.get()
    full = f"{outer}/{name}" if outer else name
    token = _scope.set(full)
    try:
        yield full
    finally:
        _scope.reset(token)


@contextmanager
def restart_numbering() -> Iterator[None]:
    """Number the steps called inside afresh (``#1``, ``#2``...), apart from the run's count.

    An adapter wraps each attempt of a unit of work that a framework retries (a LangGraph node
    under RetryPolicy): the second attempt's calls then get the keys of the first attempt's
    and replay what it recorded, instead of running again under new keys."""
    token = _counters.set({})
    try:
        yield
    finally:
        _counters.reset(token)
