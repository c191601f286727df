"""``agentledger.in_thread``: run part of a run in another thread, recorded, with keys that do
not depend on thread timing.

A thread does not inherit the context of the thread that started it, so without help its steps
would see no run. And occurrence numbers handed out to several threads in one scope would follow
whichever thread got there first. ``in_thread`` is called in the run's own thread, in the order
the work is submitted: it captures the run's context and gives the work a scope numbered in that
order, so every replay gives each piece of work the same keys.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _context
from ._errors import LedgerError
from ._session import StepCall

__all__ = ["in_thread"]

P = ParamSpec("P")
T = TypeVar("T")


def in_thread(fn: Callable[P, T], /, *, name: str | None = None) -> Callable[P, T]:
    """Wrap ``fn`` to run once in another thread as part of the current run.

    ``pool.submit(agentledger.in_thread(fetch), url)`` or
    ``threading.Thread(target=agentledger.in_thread(work))``: the wrapper carries the run's
    context (its session, scope and numbering) and a scope of its own, ``thread:<name>#<n>``
    (``name`` defaults to ``fn``'s qualified name; ``n`` counts ``in_thread`` calls in the
    calling scope), so steps inside are recorded under keys that are the same on every
    replay, whatever order the threads run in. Call ``in_thread`` in the run's thread, once per
    submission; the wrapper runs once. Outside a run, it only carries the context.
    """
    ctx = contextvars.copy_context()
    session = _context._session.get()
    if session is None or _context._step.get() is not None:
        # No run (or inside a step's body, where nested calls are part of that body): carry
        # the context only, a copy per call so that the wrapper may run in several threads.
        @functools.wraps(fn)
        def carry(*args: P.args, **kwargs: P.kwargs) -> T:
            return ctx.copy().run(fn, *args, **kwargs)

        return carry
    branch = session.step_key(StepCall(kind="thread", name=name or _name_of(fn)))
    used = threading.Lock()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        if not used.acquire(blocking=False):
            raise LedgerError(
                f"the agentledger.in_thread() wrapper of {branch!r} runs once: call in_thread "
                "for each submission (pool.submit(agentledger.in_thread(fn), x))")
        return ctx.run(_in_branch, branch, fn, args, kwargs)

    return run


def _in_branch(branch: str, fn: Callable[..., T], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> T:
    with _context.scope_as(branch):
        return fn(*args, **kwargs)


def _name_of(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "work")
