"""Recording of every call made inside the nodes of a graph compiled with a durable checkpointer.

``install()`` wraps, explicitly and reversibly (``uninstall()``), the entry points that LangGraph
and LangChain offer no supported hook for:

- ``Pregel.stream/astream`` (``invoke``/``ainvoke`` go through them): a graph invocation whose
  checkpointer carries a ``Ledger`` (``DurableCheckpointer``) opens the run named by its
  ``thread_id``, activates it for the nodes, and finishes it (completed, failed, or waiting for
  an approval) when the invocation ends. Any other graph is left alone.
- the task runner (``run_with_retry``/``arun_with_retry``): each task gets a scope that a replay
  computes again (see ``_lg_scope``), and ``interrupt()`` inside it becomes an approval.
- ``BaseChatModel.invoke/ainvoke/stream/astream/batch/abatch`` and ``BaseTool.run/arun/batch/abatch``: durable
  steps (see ``_lg_calls``).

Every wrapper is inert unless a run opened by the graph lifecycle is active in its context, so
the original behaviour is untouched everywhere else. ``DurableCheckpointer()`` calls
``install()``; calling it again does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from agentledger import Ledger, RunSession, RunStatus, _context
from agentledger._keys import check_run_id
from langgraph.errors import GraphInterrupt

from . import _interrupts
from . import _lg_calls as calls
from ._lg_calls import prepare_codec
from ._lg_scope import (
    TaskScope,
    current_task,
    graph_scope,
    mark,
    node_attempt,
    task_segment,
    unmark,
)
from ._seams import probe_reached, runner_module, self_check

__all__ = ["install", "installed", "uninstall"]

_lock = threading.Lock()
_originals: dict[tuple[Any, str], Any] = {}


def installed() -> bool:
    return bool(_originals)


# ---- the run of one graph invocation ------------------------------------------------------
def _ledger_of(graph: Any) -> Ledger | None:
    ledger = getattr(getattr(graph, "checkpointer", None), "ledger", None)
    return ledger if isinstance(ledger, Ledger) else None


def _thread_id(config: Any) -> str | None:
    if not isinstance(config, dict):
        return None
    thread = (config.get("configurable") or {}).get("thread_id")
    return None if thread is None else str(thread)


def _open_plan(graph: Any, config: Any) -> tuple[Ledger, str, Any] | None:
    """The ledger and run id when this invocation starts a durable run, else None (another
    checkpointer, no thread id, or a subgraph running inside a durable run already)."""
    from ._lg_scope import recording_sessions

    active = _context._session.get()
    if active is not None and id(active) in recording_sessions:
        return None
    ledger = _ledger_of(graph)
    thread = _thread_id(config)
    if ledger is None or thread is None:
        return None
    try:
        check_run_id(thread)
    except ValueError as e:
        raise ValueError(f"thread_id {thread!r} cannot name a durable run: {e}") from None
    prepare_codec(ledger.codec)
    return ledger, thread, graph.checkpointer


def _durability(kwargs: dict[str, Any]) -> str | None:
    """LangGraph's ``durability=`` of this invocation, when the caller chose one: the ledger
    records the graph's steps at the same level ('sync': every record acknowledged before
    the call returns; 'async'/'exit': acknowledged at barriers). Not chosen: the ledger's own
    level (docs/durability.md says why the default stays 'sync')."""
    level = kwargs.get("durability")
    return level if level in ("sync", "async", "exit") else None


def _first_read(saver: Any, config: Any) -> Any:
    # The invocation's first read of the thread (its latest checkpoint, or the one the config
    # names), made in the round trip that opens the run.
    first_read = getattr(saver, "first_read", None)
    return None if first_read is None else first_read(config)


def _opened(session: RunSession, checkpointer: Any, durability: str | None = None) -> RunSession:
    session.use_durability(durability)
    # One retention rule: an ended run's keys (its steps and the thread's checkpoints, all in
    # its key set) expire after the ledger's completed_ttl_s, or after the checkpointer's own
    # ttl when it has one. No ttl must not mean "keep forever".
    ttl = getattr(checkpointer, "ttl", None)
    if ttl is not None:
        session.ttl_s = ttl
    mark(session)
    return session


def _adoptable(thread: str) -> RunSession | None:
    """A run of the caller's own with the thread's id (``with ledger.run(thread_id):``): the
    graph records into it, and the caller finishes it. A run with another id is shadowed by the
    thread's own run for the length of the invocation."""
    active = _context._session.get()
    if active is None or active.run_id != thread:
        return None
    mark(active)
    return active


def _end_status(session: RunSession, error: BaseException | None) -> RunStatus:
    if error is not None:
        return RunStatus.FAILED
    return RunStatus.WAITING if id(session) in _interrupts.waiting_sessions else RunStatus.COMPLETED


def _stopped(e: BaseException) -> BaseException:
    # The caller stopped reading the stream (or cancelled it): the graph did not end, and the
    # next invocation of the thread resumes it.
    if isinstance(e, GeneratorExit):
        return RuntimeError("the caller closed the stream before the graph ended")
    return e


def _release(session: RunSession) -> None:
    unmark(session)
    _interrupts.waiting_sessions.discard(id(session))


def _untouched(graph: Any) -> bool:
    """A graph on another checkpointer, invoked outside any durable run: it gets the original
    stream object itself, so closing, cancellation, exceptions and timing are the framework's."""
    return _ledger_of(graph) is None and current_task.get() is None


def _stream(original: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def stream(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
        if _untouched(self):
            return original(self, input, config, **kwargs)
        return _durable_stream(original, self, input, config, kwargs)

    return stream


def _durable_stream(original: Callable[..., Iterator[Any]], graph: Any, input: Any,
                    config: Any, kwargs: dict[str, Any]) -> Iterator[Any]:
    plan = _open_plan(graph, config)
    if plan is None:  # a subgraph of a durable run: it runs under the invoking task's scope
        outer = current_task.get()
        inner = graph_scope.set(outer.scope if outer is not None else graph_scope.get())
        try:
            # yield from passes send/throw/close straight to the graph's generator.
            return (yield from original(graph, input, config, **kwargs))
        finally:
            _reset(graph_scope, inner)
    ledger, thread, saver = plan
    adopted = _adoptable(thread)
    session = adopted or _opened(ledger.open_run(thread, kind="langgraph",
                                                 read=_first_read(saver, config)),
                                 saver, _durability(kwargs))
    # An adopted run (a worker's pipeline) records the graph's steps at the invocation's own
    # durability= when it gives one, as a run of the graph's own would.
    level_before = None if adopted is None else adopted.join_durability(_durability(kwargs))
    token = session.activate()
    scope_token = graph_scope.set("")
    error: BaseException | None = None
    try:
        return (yield from original(graph, input, config, **kwargs))
    except BaseException as e:
        error = _stopped(e)
        raise
    finally:
        try:
            session.leave_durability(level_before)
            if adopted is None:
                session.finish(_end_status(session, error), error)
            elif error is None:
                # The caller's own run goes on; what this invocation saved is acknowledged
                # when control goes back to the caller, as the end of a run would.
                session.barrier()
        finally:
            _release(session)
            _reset(graph_scope, scope_token)
            _reset(_context._session, token)


def _astream(original: Callable[..., AsyncGenerator[Any, Any]]
             ) -> Callable[..., AsyncGenerator[Any, Any]]:
    def astream(self: Any, input: Any, config: Any = None, **kwargs: Any
                ) -> AsyncGenerator[Any, Any]:
        if _untouched(self):
            return original(self, input, config, **kwargs)
        return _durable_astream(original, self, input, config, kwargs)

    return astream


async def _durable_astream(original: Callable[..., AsyncGenerator[Any, Any]], graph: Any,
                           input: Any, config: Any, kwargs: dict[str, Any]
                           ) -> AsyncGenerator[Any, Any]:
    plan = _open_plan(graph, config)
    session: RunSession | None = None
    adopted: RunSession | None = None
    level_before: bool | None = None
    token: Any = None
    if plan is None:  # a subgraph of a durable run: it runs under the invoking task's scope
        outer = current_task.get()
        scope_token = graph_scope.set(outer.scope if outer is not None else graph_scope.get())
    else:
        ledger, thread, saver = plan
        adopted = _adoptable(thread)
        session = adopted or _opened(await ledger.aopen_run(
            thread, kind="langgraph", read=_first_read(saver, config)), saver,
            _durability(kwargs))
        level_before = None if adopted is None else adopted.join_durability(_durability(kwargs))
        token = session.activate()
        scope_token = graph_scope.set("")
    error: BaseException | None = None
    inner = original(graph, input, config, **kwargs)
    try:
        # What ``yield from`` does for a sync generator: asend/athrow reach the graph's
        # generator, and closing this one closes it at once (``async for`` would leave it
        # to the garbage collector, and the graph's running nodes would be cancelled late).
        chunk = await anext(inner)
        while True:
            try:
                sent = yield chunk
            except GeneratorExit:
                raise
            except BaseException as e:
                chunk = await inner.athrow(e)
            else:
                chunk = await inner.asend(sent)
    except StopAsyncIteration:
        pass
    except BaseException as e:
        error = _stopped(e)
        raise
    finally:
        try:
            await inner.aclose()
        finally:
            try:
                if session is not None:
                    session.leave_durability(level_before)
                if session is not None and adopted is None:
                    await session.afinish(_end_status(session, error), error)
                elif session is not None and error is None:
                    await session.abarrier()
            finally:
                if session is not None:
                    _release(session)
                    _reset(_context._session, token)
                _reset(graph_scope, scope_token)


def _reset(var: Any, token: Any) -> None:
    # A generator closed by the garbage collector may finish in another context.
    with contextlib.suppress(ValueError):
        var.reset(token)


# ---- one task -----------------------------------------------------------------------------
def _enter(task: Any) -> tuple[RunSession, TaskScope] | None:
    from ._lg_scope import recording_sessions

    session = _context._session.get()
    if session is None or id(session) not in recording_sessions:
        return None
    meta = (task.config or {}).get("metadata") or {}
    segment = task_segment(task.name, meta.get("langgraph_step", "?"), tuple(task.path))
    outer = graph_scope.get()
    scope = TaskScope(scope=f"{outer}/{segment}" if outer else segment)
    _interrupts.hook_scratchpad(task.config, session, scope)
    return session, scope


def _run_with_retry(original: Callable[..., Any]) -> Callable[..., Any]:
    def run_with_retry(task: Any, *args: Any, **kwargs: Any) -> Any:
        probe_reached("run_with_retry")
        entered = _enter(task)
        if entered is None:
            return original(task, *args, **kwargs)
        session, scope = entered
        token, scope_token = current_task.set(scope), _context._scope.set(scope.scope)
        # @agentledger.step calls are numbered per node attempt: a RetryPolicy retry
        # replays what earlier attempts recorded and re-runs what failed (what
        # restart_numbering does, without a generator per task).
        numbering = _context._numbering.set(_context.Numbering(node_attempt))
        try:
            return original(task, *args, **kwargs)
        except GraphInterrupt as e:
            _interrupts.record_interrupts(session, scope, e)
            raise
        finally:
            _context._numbering.reset(numbering)
            _context._scope.reset(scope_token)
            current_task.reset(token)

    return run_with_retry


def _arun_with_retry(original: Callable[..., Any]) -> Callable[..., Any]:
    async def arun_with_retry(task: Any, *args: Any, **kwargs: Any) -> Any:
        probe_reached("arun_with_retry")
        entered = _enter(task)
        if entered is None:
            return await original(task, *args, **kwargs)
        session, scope = entered
        token, scope_token = current_task.set(scope), _context._scope.set(scope.scope)
        # @agentledger.step calls are numbered per node attempt: a RetryPolicy retry
        # replays what earlier attempts recorded and re-runs what failed (what
        # restart_numbering does, without a generator per task).
        numbering = _context._numbering.set(_context.Numbering(node_attempt))
        try:
            return await original(task, *args, **kwargs)
        except GraphInterrupt as e:
            _interrupts.record_interrupts(session, scope, e)
            raise
        finally:
            _context._numbering.reset(numbering)
            _context._scope.reset(scope_token)
            current_task.reset(token)

    return arun_with_retry


# ---- install / uninstall ------------------------------------------------------------------
def _targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.tools import BaseTool

    from langgraph.pregel import Pregel

    _runner = runner_module()
    return [
        (Pregel, "stream", _stream),
        (Pregel, "astream", _astream),
        (_runner, "run_with_retry", _run_with_retry),
        (_runner, "arun_with_retry", _arun_with_retry),
        (BaseChatModel, "invoke", calls.model_invoke),
        (BaseChatModel, "ainvoke", calls.model_ainvoke),
        (BaseChatModel, "stream", calls.model_stream),
        (BaseChatModel, "astream", calls.model_astream),
        (BaseChatModel, "batch", calls.batch("llm")),
        (BaseChatModel, "abatch", calls.abatch("llm")),
        (BaseTool, "run", calls.tool_run),
        (BaseTool, "arun", calls.tool_arun),
        (BaseTool, "batch", calls.batch("tool")),
        (BaseTool, "abatch", calls.abatch("tool")),
    ]


def install() -> None:
    """Wrap the entry points (idempotent). Inert for graphs without a durable checkpointer."""
    with _lock:
        if _originals:
            return
        for owner, name, wrap in _targets():
            original = getattr(owner, name)
            # None: the attribute was inherited, and uninstall() deletes it again.
            _originals[(owner, name)] = owner.__dict__.get(name)
            wrapped = wrap(original)
            wrapped.__wrapped__ = original
            wrapped.__doc__ = original.__doc__
            setattr(owner, name, wrapped)
        try:
            # A LangGraph release that bypasses a wrapped call site fails here, loudly, not
            # by recording nothing.
            self_check()
        except BaseException:
            _restore()
            raise


def uninstall() -> None:
    """Put the original entry points back (idempotent)."""
    with _lock:
        _restore()


def _restore() -> None:
    for (owner, name), original in _originals.items():
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
    _originals.clear()
