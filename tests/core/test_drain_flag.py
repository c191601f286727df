"""A draining worker's stop request: the step in flight records as usual, the next step
boundary raises FencedOutError, and the lease is still this session's (so the run is handed
on as running, not left in doubt), whatever ``fenced`` means."""

from __future__ import annotations

import pytest

from agentledger import FencedOutError, Ledger, RunStatus, StepCall, StepKind


def test_a_stop_request_ends_the_run_at_the_next_step_with_nothing_in_doubt(ledger: Ledger
                                                                             ) -> None:
    session = ledger.open_run("drained")
    token = session.activate()
    try:
        start = session.begin(StepCall(kind=StepKind.TOOL, name="pay", inputs={"n": 1}))
        session.stop_requested = True  # what Worker.stop() does, mid-step
        session.record(start, "paid")  # the step in flight still records
        with pytest.raises(FencedOutError, match="stopping"):
            session.begin(StepCall(kind=StepKind.TOOL, name="ship", inputs={"n": 1}))
    finally:
        session.deactivate(token)
    assert not session.fenced
    assert session.finish(RunStatus.RUNNING)  # the lease was still ours: handed on
    run = ledger.get_run("drained")
    assert run is not None and run.owner == "" and run.status == RunStatus.RUNNING
    assert [(s.name, s.status) for s in ledger.steps("drained")] == [("pay", "completed")]
