"""A CrewAI upgrade that moves a private call site the handler records through fails loudly
(at attach, or at the end of the first kickoff) instead of silently recording nothing."""

from __future__ import annotations

from typing import Any

import pytest
from crew_fakes import build_crew
from crewai import Crew, Task

from agentledger import Ledger, RunStatus
from agentledger.crewai import CrewSeamError, DurableCrewHandler
from agentledger.crewai._seams import crewai_version

INPUTS = {"topic": "launch"}


class RenamedCoreTask(Task):
    """A Task as a future CrewAI might ship it: the core runs under a new private name."""

    def execute_sync(self, agent: Any = None, context: str | None = None,
                     tools: Any = None) -> Any:
        return self._run_core(agent, context, tools)

    def _run_core(self, agent: Any, context: str | None, tools: Any) -> Any:
        return Task._execute_core(self, agent, context, tools)


class ClassCallTask(Task):
    """Still names ``_execute_core`` but calls the class's, bypassing the instance's."""

    def execute_sync(self, agent: Any = None, context: str | None = None,
                     tools: Any = None) -> Any:
        return Task._execute_core(self, agent, context, tools)


def _crew(task_type: type[Task]) -> Crew:
    researcher = build_crew().agents[0]
    task = task_type(description="Research {topic}", expected_output="facts",
                     agent=researcher)
    return Crew(agents=[researcher], tasks=[task])


def test_attach_refuses_a_task_whose_execute_sync_no_longer_calls_the_seam(
        ledger: Ledger) -> None:
    crew = _crew(RenamedCoreTask)
    handler = DurableCrewHandler("seam-attach", ledger=ledger)
    with pytest.raises(CrewSeamError,
                       match=r"RenamedCoreTask\.execute_sync no longer calls _execute_core") as e:
        handler.attach(crew)
    assert f"crewai {crewai_version()}" in str(e.value)
    assert handler.crew is None and "kickoff" not in crew.__dict__  # nothing changed
    assert ledger.get_run("seam-attach") is None


def test_a_kickoff_whose_tasks_bypass_the_wrapper_fails_the_run(ledger: Ledger) -> None:
    crew = _crew(ClassCallTask)
    DurableCrewHandler("seam-kickoff", ledger=ledger).attach(crew)
    with pytest.raises(CrewSeamError, match=r"1 task output\(s\) without calling"):
        crew.kickoff(inputs=INPUTS)
    run = ledger.get_run("seam-kickoff")
    assert run is not None and run.status == RunStatus.FAILED


def test_a_real_crew_passes_both_checks(ledger: Ledger) -> None:
    crew = _crew(Task)
    handler = DurableCrewHandler("seam-real", ledger=ledger).attach(crew)
    out = crew.kickoff(inputs=INPUTS)
    assert len(out.tasks_output) == 1
    assert handler.last_session is not None and handler.last_session.executed > 0
    run = ledger.get_run("seam-real")
    assert run is not None and run.status == RunStatus.COMPLETED
