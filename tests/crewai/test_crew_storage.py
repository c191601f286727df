"""CrewAI's own storage stays inside the test session, not in the shared home directory."""

from __future__ import annotations

import os
from pathlib import Path

from crew_fakes import build_crew

from agentledger import Ledger
from agentledger.crewai import DurableCrewHandler


def test_crewai_storage_is_the_test_sessions_own(ledger: Ledger) -> None:
    storage = Path(os.environ["CREWAI_STORAGE_DIR"])
    assert storage.is_absolute() and not storage.is_relative_to(Path.home())
    crew = build_crew()
    DurableCrewHandler("storage-1", ledger=ledger).attach(crew)
    crew.kickoff(inputs={"topic": "launch"})
    assert (storage / "latest_kickoff_task_outputs.db").exists()
