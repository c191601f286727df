"""The agentledger command, on a real Redis."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys

import pytest

import agentledger
from agentledger import ApprovalPending, Ledger
from agentledger._cli import main


def cli(redis_url: str, prefix: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--url", redis_url, "--prefix", prefix, *args], out=out)
    return code, out.getvalue()


@agentledger.step
def lookup(order: str) -> dict[str, str]:
    return {"order": order, "state": "paid"}


def waiting_run(ledger: Ledger) -> None:
    with pytest.raises(ApprovalPending), ledger.run("refund-7"):
        lookup("7")
        agentledger.approval("refund", {"order": "7", "amount": 30})


def test_runs_show_approvals_approve_delete_gc(ledger: Ledger, redis_url: str, prefix: str) -> None:
    with ledger.run("order-1"):
        lookup("1")
    waiting_run(ledger)

    code, text = cli(redis_url, prefix, "runs")
    assert code == 0 and "order-1" in text and "refund-7" in text and "waiting" in text
    code, text = cli(redis_url, prefix, "--json", "runs", "--status", "waiting")
    assert [r["run_id"] for r in json.loads(text)] == ["refund-7"]

    code, text = cli(redis_url, prefix, "show", "order-1")
    assert code == 0 and "lookup" in text and "completed" in text and '"paid"' in text
    code, text = cli(redis_url, prefix, "--json", "show", "refund-7")
    steps = json.loads(text)["steps"]
    assert [(s["kind"], s["status"]) for s in steps] == [("step", "completed"), ("approval", "waiting")]

    code, text = cli(redis_url, prefix, "approvals")
    assert code == 0 and "refund-7" in text and "approval:refund#1" in text and '"amount": 30' in text
    code, text = cli(redis_url, prefix, "approve", "refund-7", "--by", "ann", "--note", "ok, 30",
                     "--payload", '{"amount": 25}')
    assert code == 0 and "approved" in text
    code, text = cli(redis_url, prefix, "--json", "approvals")
    assert json.loads(text) == []

    with ledger.run("refund-7"):
        assert lookup("7")["state"] == "paid"
        decision = agentledger.approval("refund", {"order": "7", "amount": 30})
    assert (decision.approved, decision.by, decision.note, decision.payload) == (
        True, "ann", "ok, 30", {"amount": 25})

    code, text = cli(redis_url, prefix, "approve", "refund-7")
    assert code == 1  # nothing waits any more
    code, text = cli(redis_url, prefix, "delete", "order-1")
    assert code == 0 and "deleted 2 keys" in text
    code, text = cli(redis_url, prefix, "show", "order-1")
    assert code == 1
    code, text = cli(redis_url, prefix, "--json", "gc")
    assert json.loads(text) == {"dropped": 0}


def test_reject_from_the_cli(ledger: Ledger, redis_url: str, prefix: str) -> None:
    waiting_run(ledger)
    code, _ = cli(redis_url, prefix, "approve", "refund-7", "approval:refund#1", "--reject",
                  "--by", "bo", "--note", "too much")
    assert code == 0
    with ledger.run("refund-7"):
        d = agentledger.approval("refund", {"order": "7", "amount": 30})
    assert (d.approved, d.by, d.note) == (False, "bo", "too much")


def test_console_script_runs(redis_url: str, prefix: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "agentledger._cli", "--url", redis_url,
                           "--prefix", prefix, "runs"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("RUN")


def test_unreachable_redis_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", "redis://127.0.0.1:1/0", "runs"])
    assert code == 1
    assert "Redis unreachable" in capsys.readouterr().err


def test_show_prints_values_as_written_and_a_waiting_step_as_waiting(
        ledger: Ledger, redis_url: str, prefix: str) -> None:
    @agentledger.step
    def when(order: str) -> tuple[str, dt.date]:
        return (order, dt.date(2026, 1, 2))

    with pytest.raises(ApprovalPending), ledger.run("refund-8"):
        when("8")
        agentledger.approval("refund", {"order": "8"})
    code, text = cli(redis_url, prefix, "show", "refund-8")
    assert code == 0 and "$al" not in text and '["8", "2026-01-02"]' in text
    approval_row = next(line for line in text.splitlines() if "approval" in line)
    assert "waiting for a person" in approval_row and "executed" not in approval_row
    code, text = cli(redis_url, prefix, "approvals")
    assert f"agentledger approve --prefix {prefix} refund-8 'approval:refund#1'" in text


def test_approve_help_says_what_each_decision_means() -> None:
    proc = subprocess.run([sys.executable, "-m", "agentledger._cli", "approve", "--help"],
                          capture_output=True, text=True, timeout=60)
    text = " ".join(proc.stdout.split())
    assert "the effect did not happen: run the step again" in text
    assert "the effect happened and V (JSON) is its result" in text
    assert "--reject fail the step" in text


def test_approvals_say_what_deciding_an_in_doubt_step_means(
        ledger: Ledger, redis_url: str, prefix: str) -> None:
    @agentledger.step(in_doubt="fail")
    def pay(order: str) -> str:
        raise KeyboardInterrupt  # the process stops inside the body: no outcome recorded

    with pytest.raises(KeyboardInterrupt), ledger.run("pay-1"):
        pay("1")
    code, text = cli(redis_url, prefix, "approvals")
    assert code == 0 and "in doubt" in text
    assert ("approve = run it again; approve --payload JSON = it happened, JSON is its result; "
            "approve --reject = fail it") in text
    code, text = cli(redis_url, prefix, "show", "pay-1")
    assert "executed" not in text.splitlines()[-1]
