"""CrewAI Flows: @persist state and pending feedback in the ledger's Redis, and a crew kicked
off inside a flow step durable under the flow's id."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from crew_fakes import build_crew, read_effects
from crewai.flow.async_feedback.types import PendingFeedbackContext
from crewai.flow.flow import Flow, listen, start
from crewai.flow.persistence import persist
from crewai.flow.runtime import FlowState

from agentledger import CorruptRecordError, Ledger, RunStatus
from agentledger.crewai import DurableCrewHandler


class LaunchState(FlowState):
    note: str = ""
    edits: int = 0


def _flow_class(ledger: Ledger) -> type[Flow[LaunchState]]:
    persistence = DurableCrewHandler.flow_persistence(ledger)

    @persist(persistence)
    class LaunchFlow(Flow[LaunchState]):
        @start()
        def write(self) -> str:
            crew = build_crew()
            DurableCrewHandler.for_flow(self, "write", ledger=ledger).attach(crew)
            self.state.note = crew.kickoff(inputs={"topic": "launch"}).raw
            return self.state.note

        @listen(write)
        def edit(self, note: str) -> str:
            self.state.edits += 1
            return note.upper()

    return LaunchFlow


def test_flow_state_lives_in_the_ledger_and_its_crew_is_durable(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    effects = tmp_path / "effects.txt"
    monkeypatch.setenv("CREW_EFFECTS", str(effects))
    flow = _flow_class(ledger)()
    assert flow.kickoff() == "EDITOR DONE AFTER 0 RESULTS"
    flow_id = flow.state.id
    persistence = DurableCrewHandler.flow_persistence(ledger)
    saved = persistence.load_state(flow_id)
    assert saved is not None and saved["note"] == "editor done after 0 results"
    assert saved["edits"] == 1
    run = ledger.get_run(f"flow-{flow_id}.write")
    assert run is not None and run.status == RunStatus.COMPLETED
    ran = read_effects(effects)

    # A new process would do this: the same flow id restores the state from Redis, and the
    # crew inside replays its recorded run instead of emailing again.
    again = _flow_class(ledger)()
    again.kickoff(inputs={"id": flow_id})
    assert again.state.edits == 2
    assert read_effects(effects) == ran
    key = ledger.keys(flow_id).extra("flow_state")
    assert key.startswith(f"{ledger.prefix}:{{{flow_id}}}")


def test_pending_feedback_round_trips_and_clears(ledger: Ledger) -> None:
    persistence = DurableCrewHandler.flow_persistence(ledger)
    context = PendingFeedbackContext(flow_id="f-1", flow_class="tests.LaunchFlow",
                                     method_name="review", method_output="draft",
                                     message="Approve the draft?")
    persistence.save_pending_feedback("f-1", context, LaunchState(id="f-1", note="draft"))
    loaded = persistence.load_pending_feedback("f-1")
    assert loaded is not None
    state, back = loaded
    assert state["note"] == "draft"
    assert back.method_name == "review" and back.message == "Approve the draft?"
    assert persistence.load_state("f-1") == state
    persistence.clear_pending_feedback("f-1")
    assert persistence.load_pending_feedback("f-1") is None


def test_a_corrupt_flow_record_is_a_clear_error(ledger: Ledger, redis_url: str) -> None:
    persistence = DurableCrewHandler.flow_persistence(ledger)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(ledger.keys("f-2").extra("flow_state"), b"{not json")
    finally:
        client.close()
    with pytest.raises(CorruptRecordError, match="flow_state"):
        persistence.load_state("f-2")
    with pytest.raises(TypeError, match="dict or a pydantic model"):
        persistence.save_state("f-2", "m", 42)  # type: ignore[arg-type]
