"""Every private LangGraph internal the adapter relies on, in one place, and a self-check.

Where LangGraph or LangChain offer a public hook the adapter uses it instead
(``get_runtime().execution_info`` for the node attempt and the task id, ``GraphInterrupt``,
``convert_to_messages``). Two places have none; both were checked on langgraph 1.2.12–1.2.24:

- **The task runner**: ``langgraph.pregel._runner`` calls ``run_with_retry`` /
  ``arun_with_retry`` (imported from ``langgraph.pregel._retry``) by their module-global names
  for every task; the adapter replaces those names to give each task its scope.
- **The scratchpad**: ``config["configurable"]["__pregel_scratchpad"]``, a dataclass whose
  ``interrupt_counter``, ``get_null_resume`` and ``resume`` ``interrupt()`` consults; the adapter
  replaces the first two so that a recorded decision answers ``interrupt()``.

A LangGraph release that moved either would make recording silently do nothing, so
:func:`self_check` runs a one-node graph, sync and async, when the adapter installs, and raises
:class:`SeamMovedError` unless both seams were really reached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from contextvars import ContextVar
from importlib.metadata import version
from types import ModuleType
from typing import Any, TypedDict

__all__ = ["RUNNER_CALLS", "SeamMovedError", "probe_reached", "runner_module", "scratchpad",
           "self_check", "with_scratchpad"]

RUNNER_CALLS = ("run_with_retry", "arun_with_retry")
_SCRATCHPAD = "__pregel_scratchpad"
_SCRATCHPAD_FIELDS = ("interrupt_counter", "get_null_resume", "resume")

# Set while the self-check's probe graph runs: the task wrappers note that they were reached.
_probe: ContextVar[set[str] | None] = ContextVar("agentledger_lg_probe", default=None)


class SeamMovedError(RuntimeError):
    """The installed LangGraph no longer goes through a call site the adapter wraps."""


def runner_module() -> ModuleType:
    from langgraph.pregel import _runner

    missing = [n for n in RUNNER_CALLS if not callable(getattr(_runner, n, None))]
    if missing:
        raise _moved(f"langgraph.pregel._runner has no {', '.join(missing)}")
    return _runner


def probe_reached(kind: str) -> None:
    """Called by the task wrappers on every task (a ContextVar read outside the probe)."""
    marks = _probe.get()
    if marks is not None:
        marks.add(kind)


_hookable: dict[type, bool] = {}


def scratchpad(config: dict[str, Any]) -> Any | None:
    """The task's scratchpad, or None when there is none (or not one the adapter can hook)."""
    pad = (config.get("configurable") or {}).get(_SCRATCHPAD)
    if pad is None:
        return None
    hookable = _hookable.get(type(pad))
    if hookable is None:  # once per class: a dataclass's fields are the class's
        hookable = _hookable[type(pad)] = dataclasses.is_dataclass(pad) and all(
            hasattr(pad, f) for f in _SCRATCHPAD_FIELDS)
    return pad if hookable else None


def with_scratchpad(config: dict[str, Any], pad: Any, **changes: Any) -> None:
    config["configurable"][_SCRATCHPAD] = dataclasses.replace(pad, **changes)


def _moved(what: str) -> SeamMovedError:
    return SeamMovedError(
        f"agentledger.langgraph cannot record on langgraph {version('langgraph')}: {what}. "
        "It was checked on langgraph 1.2.12-1.2.24; install one of those "
        "(pip install 'agentledger[langgraph]') or an agentledger that supports this release.")


class _Probe(TypedDict, total=False):
    seen: bool


def _probe_graph() -> Any:
    from langgraph.config import get_config
    from langgraph.graph import END, START, StateGraph

    def node(state: _Probe) -> _Probe:
        marks = _probe.get()
        if marks is not None and scratchpad(get_config()) is not None:
            marks.add("scratchpad")
        return {"seen": True}

    b = StateGraph(_Probe)
    b.add_node("probe", node)
    b.add_edge(START, "probe")
    b.add_edge("probe", END)
    return b.compile()


def self_check() -> None:
    """Run a one-node graph sync and async; raise SeamMovedError unless every seam was reached."""
    graph = _probe_graph()
    sync_marks: set[str] = set()
    token = _probe.set(sync_marks)
    try:
        graph.invoke({})
    finally:
        _probe.reset(token)
    async_marks: set[str] = set()

    async def run_async() -> None:
        _probe.set(async_marks)
        await graph.ainvoke({})

    # A thread of its own: install() may be called inside a running event loop.
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(errors, run_async), daemon=True)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    missing = []
    if "run_with_retry" not in sync_marks:
        missing.append("its task runner no longer calls langgraph.pregel._runner.run_with_retry")
    if "arun_with_retry" not in async_marks:
        missing.append("its task runner no longer calls langgraph.pregel._runner.arun_with_retry")
    if "scratchpad" not in sync_marks or "scratchpad" not in async_marks:
        missing.append(f"a task's config has no {_SCRATCHPAD} with "
                       f"{', '.join(_SCRATCHPAD_FIELDS)}")
    if missing:
        raise _moved("; ".join(missing))


def _capture(errors: list[BaseException], run: Any) -> None:
    try:
        asyncio.run(run())
    except BaseException as e:
        errors.append(e)
