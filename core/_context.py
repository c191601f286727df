"""Context variables: the active run session, the current scope and the step being executed."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._session import RunSession, StepStart

__all__ = ["current_idempotency_key", "current_run", "current_scope", "outside_run",
           "restart_numbering", "scope"]

_session: ContextVar[RunSession | None] = ContextVar("agentledger_session", default=None)
_scope: ContextVar[str] = ContextVar("agentledger_scope", default="")
# (scope, thread id) of the thread that entered the current scope: only it numbers steps there.
_scope_owner: ContextVar[tuple[str, int] | None] = ContextVar("agentledger_scope_owner",
                                                              default=None)
_step: ContextVar[StepStart | None] = ContextVar("agentledger_step", default=None)


class Numbering:
    """Occurrence counters of step keys within one unit of work that a framework may retry:
    each attempt numbers its steps afresh, so a retry replays what earlier attempts
    recorded (a step recorded as failed runs again; see ``RunSession.step_key``)."""

    def __init__(self, attempt: int | Callable[[], int] = 1) -> None:
        self._attempt_of = attempt if callable(attempt) else (lambda: attempt)
        self._attempt = 0
        self._counters: dict[str, int] = {}

    def current(self) -> tuple[dict[str, int], int]:
        attempt = self._attempt_of()
        if attempt != self._attempt:
            self._attempt = attempt
            self._counters = {}
        return self._counters, attempt


# Occurrence numbering; None: the session's own counters. See restart_numbering().
_numbering: ContextVar[Numbering | None] = ContextVar("agentledger_numbering", default=None)
# True inside outside_run(): steps here are plain calls even while a run is active elsewhere.
_outside: ContextVar[bool] = ContextVar("agentledger_outside", default=False)

# Sessions activated (RunSession.activate) and not yet finished, in this process: a step
# called where no run is in context while one of these lives was most likely called from a
# thread the run's context did not reach.
_active: weakref.WeakKeyDictionary[RunSession, int] = weakref.WeakKeyDictionary()
_active_lock = threading.Lock()


def note_active(session: RunSession, delta: int) -> None:
    with _active_lock:
        n = _active.get(session, 0) + delta
        if n > 0:
            _active[session] = n
        else:
            _active.pop(session, None)


def run_active_elsewhere() -> RunSession | None:
    """A run active in this process although not in this context (None inside outside_run)."""
    if _outside.get() or not _active:
        return None
    with _active_lock:
        for session in _active:
            if not session.finished and not session.fenced:
                return session
    return None


@contextmanager
def outside_run() -> Iterator[None]:
    """Call steps inside as plain functions, on purpose, while a run is active in another
    thread of this process (otherwise such a call raises :class:`NoRunContextError`)."""
    token = _outside.set(True)
    try:
        yield
    finally:
        _outside.reset(token)


def current_run() -> RunSession | None:
    """The run session active in this context, or None outside a run."""
    return _session.get()


def joinable_run(run_id: str, ledger: Ledger | None = None) -> RunSession | None:
    """The run session active in this context if it is run ``run_id`` on ``ledger`` (on the
    same Redis under the same prefix; None: any ledger), else None. An adapter started inside
    it (a worker's pipeline) records into it rather than opening the run again, whose lease
    is held right here; the session's opener finishes it."""
    session = _session.get()
    if session is None or session.run_id != run_id or session.finished:
        return None
    own = session.ledger
    if ledger is None or ledger is own or (
            ledger.prefix == own.prefix and ledger.url is not None and ledger.url == own.url):
        return session
    return None


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
    with scope_as(f"{outer}/{name}" if outer else name) as full:
        yield full


@contextmanager
def scope_as(full: str) -> Iterator[str]:
    """Set the current scope to ``full`` as it is (not joined to the outer one), owned by
    this thread."""
    token = _scope.set(full)
    owner = _scope_owner.set((full, threading.get_ident()))
    try:
        yield full
    finally:
        _scope_owner.reset(owner)
        _scope.reset(token)


@contextmanager
def restart_numbering(attempt: int | Callable[[], int] = 1) -> Iterator[None]:
    """Number the steps called inside afresh (``#1``, ``#2``...), apart from the run's count.

    An adapter wraps a unit of work that a framework retries (a LangGraph node under
    RetryPolicy), with ``attempt`` the attempt number or a function returning it: each
    attempt's steps get the first attempt's keys and replay what it recorded, except a step
    recorded as failed, which runs again under a key of its own attempt."""
    token = _numbering.set(Numbering(attempt))
    try:
        yield
    finally:
        _numbering.reset(token)
