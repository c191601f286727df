"""The private CrewAI names the adapter depends on, and the checks that make a moved one fail
loudly instead of silently recording nothing.

CrewAI 1.15.x has no public hook that can run a task's body *instead of* CrewAI's (a replayed
task must not run again; task callbacks and events only observe), and no public reader of the
call-scoped streaming mode. So:

- ``Task._execute_core`` / ``Task._aexecute_core`` (1.15.x: called as ``self._execute_core``
  by ``execute_sync`` and ``_execute_task_async``, the thread body of ``execute_async``; as
  ``self._aexecute_core`` by ``aexecute_sync``): the handler shadows them per task instance.
- ``BaseLLM._effective_stream`` (1.15.x: the per-call stream override CrewAI sets on the LLM
  it holds): ``DurableLLM`` hands it to the real LLM.

``check_seams`` runs at ``attach``; ``check_tasks_reached`` at the end of each kickoff.
"""

from __future__ import annotations

import inspect
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from agentledger import LedgerError
from crewai.llms.base_llm import BaseLLM
from crewai.task import Task

__all__ = ["CrewSeamError", "check_seams", "check_tasks_reached"]

# (method that must still call the seam, the seam): verified against crewai 1.15.x.
TASK_CALL_SITES: tuple[tuple[str, str], ...] = (
    ("execute_sync", "_execute_core"),
    ("_execute_task_async", "_execute_core"),
    ("aexecute_sync", "_aexecute_core"),
)
LLM_SEAMS: tuple[str, ...] = ("_effective_stream",)


class CrewSeamError(LedgerError):
    """The installed CrewAI no longer has a private call site the adapter records through."""


def crewai_version() -> str:
    try:
        return version("crewai")
    except PackageNotFoundError:  # pragma: no cover - crewai imported, so installed
        return "unknown"


def _fail(what: str) -> CrewSeamError:
    return CrewSeamError(
        f"agentledger.crewai cannot record on crewai {crewai_version()}: {what}. The adapter "
        "is verified against crewai 1.15.x (see agentledger/crewai/_seams.py); pin crewai "
        "to that or upgrade agentledger.")


def _code_names(function: Any) -> frozenset[str]:
    code = getattr(inspect.unwrap(function), "__code__", None)
    return frozenset(code.co_names) if code is not None else frozenset()


def check_seams(task_types: set[type[Task]]) -> None:
    """Raise :class:`CrewSeamError` if a seam is gone or no longer called where we expect."""
    for name in LLM_SEAMS:
        if not callable(getattr(BaseLLM, name, None)):
            raise _fail(f"BaseLLM.{name} is gone")
    for task_type in sorted(task_types, key=lambda t: t.__qualname__):
        for caller, seam in TASK_CALL_SITES:
            label = f"{task_type.__qualname__}.{caller}"
            if not callable(getattr(task_type, seam, None)):
                raise _fail(f"{task_type.__qualname__}.{seam} is gone")
            method = getattr(task_type, caller, None)
            if method is None:
                raise _fail(f"{label} is gone")
            if seam not in _code_names(method):
                raise _fail(f"{label} no longer calls {seam}")


def check_tasks_reached(result: Any, task_entries: int) -> None:
    """After a kickoff: CrewAI produced task outputs but no task went through our wrapper,
    so nothing was recorded (the seam moved in a way ``check_seams`` could not see)."""
    outputs = getattr(result, "tasks_output", None)
    if outputs and task_entries == 0:
        raise _fail(f"the kickoff produced {len(outputs)} task output(s) without calling "
                    "Task._execute_core / _aexecute_core, so no task was recorded")
