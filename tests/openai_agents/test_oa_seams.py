"""The private SDK seams fail loudly when the SDK moves them: at install when a module no
longer calls a name we wrap, and after the first run whose model answered around them."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "children"))

import agents.run_internal.run_loop as run_loop
import agents.run_internal.turn_preparation as turn_preparation
from oa_world import agent_for

from agentledger import Ledger, LedgerError, RunStatus
from agentledger.openai_agents import DurableRunner, _patch


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.txt"
    monkeypatch.setenv("AL_EFFECTS", str(path))
    return path


async def test_a_model_call_site_that_moved_fails_the_run_instead_of_recording_nothing(
        ledger: Ledger, effects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch.install()
    # What an SDK upgrade that resolves models elsewhere looks like: the loop calls the
    # original function, never our wrapper.
    monkeypatch.setattr(run_loop, "get_model", turn_preparation.get_model)
    with pytest.raises(LedgerError, match=r"never called .*get_model"):
        await DurableRunner.run(agent_for("seq"), "go", run_id="moved", ledger=ledger)
    run = ledger.get_run("moved")
    assert run is not None and run.status == RunStatus.FAILED and "get_model" in run.last_error


async def test_a_streamed_run_around_a_moved_seam_is_recorded_as_failed(
        ledger: Ledger, effects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch.install()
    monkeypatch.setattr(run_loop, "get_model", turn_preparation.get_model)
    streamed = DurableRunner.run_streamed(agent_for("seq"), "go", run_id="smoved", ledger=ledger)
    async for _ in streamed.stream_events():
        pass
    run = ledger.get_run("smoved")
    assert run is not None and run.status == RunStatus.FAILED and "get_model" in run.last_error


def test_install_refuses_a_module_that_no_longer_calls_the_wrapped_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _patch.uninstall()
    stand_in = types.ModuleType("agents.run_internal.run_loop")
    stand_in.get_model = turn_preparation.get_model  # type: ignore[attr-defined]
    stand_in.get_handoffs = turn_preparation.get_handoffs  # type: ignore[attr-defined]
    monkeypatch.setattr(_patch, "_run_loop", stand_in)
    try:
        with pytest.raises(RuntimeError, match=r"no function of agents\.run_internal\.run_loop "
                                               "calls get_model"):
            _patch.install()
        assert not _patch.installed()
    finally:
        monkeypatch.undo()
        _patch.install()
    assert _patch.installed()
