"""``@agentledger.step``: a function whose calls are durable steps inside a run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from . import _context
from ._errors import LedgerError, NoRunContextError
from ._records import Decision, InDoubtPolicy, StepKind
from ._session import StepCall

__all__ = ["aapproval", "approval", "step"]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def step(fn: F, /) -> F: ...


@overload
def step(*, name: str | None = None, in_doubt: InDoubtPolicy | str | None = None,
         kind: StepKind | str = StepKind.STEP) -> Callable[[F], F]: ...


def step(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
         in_doubt: InDoubtPolicy | str | None = None,
         kind: StepKind | str = StepKind.STEP) -> Any:
    """Make each call of a function (sync or async) a durable step of the current run.

    Inside ``with ledger.run(...)`` (or an adapter's run), the first call executes and its
    result is recorded; after a crash, the restarted run gets the recorded result back and
    the body does not run again. ``in_doubt`` says what to do if the process died inside
    the body: 'rerun' (same idempotency key, see ``current_idempotency_key()``), 'fail' or
    'ask'. Outside a run the function is simply called.
    """
    if in_doubt is not None:
        in_doubt = InDoubtPolicy(in_doubt)

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        step_name = name or f.__qualname__
        sig = inspect.signature(f)

        def describe(args: tuple[Any, ...], kwargs: dict[str, Any]) -> StepCall:
            try:
                bound = sig.bind(*args, **kwargs)
                inputs: Any = dict(bound.arguments)
            except TypeError:
                inputs = {"args": list(args), "kwargs": kwargs}
            return StepCall(kind=kind, name=step_name, inputs=inputs, policy=in_doubt)

        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                session = _context._session.get()
                if session is None:
                    _check_no_run(step_name)
                    return await f(*args, **kwargs)
                if _context._step.get() is not None:
                    return await f(*args, **kwargs)
                return await session.acall(describe(args, kwargs), f, *args, **kwargs)

            return async_wrapper

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = _context._session.get()
            if session is None:
                _check_no_run(step_name)
                return f(*args, **kwargs)
            # A step called inside another step is part of that step's body.
            if _context._step.get() is not None:
                return f(*args, **kwargs)
            return session.call(describe(args, kwargs), f, *args, **kwargs)

        return wrapper

    return wrap(fn) if fn is not None else wrap


def _check_no_run(step_name: str) -> None:
    """Outside any run a step is a plain call, unless a run is active in this process: then
    this context most likely lost the run's (a thread), and silence would lose the step."""
    active = _context.run_active_elsewhere()
    if active is not None:
        raise NoRunContextError(step_name, active.run_id)


def approval(name: str, payload: Any = None) -> Decision:
    """Ask a person inside the current run. Returns the recorded decision; until there is
    one, raises ``ApprovalPending`` and the run stops with status 'waiting'."""
    session = _context._session.get()
    if session is None:
        raise LedgerError("agentledger.approval() needs an active run (with ledger.run(...))")
    return session.approval(name, payload)


async def aapproval(name: str, payload: Any = None) -> Decision:
    session = _context._session.get()
    if session is None:
        raise LedgerError("agentledger.aapproval() needs an active run (async with ledger.arun(...))")
    return await session.aapproval(name, payload)
