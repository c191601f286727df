"""Crash a pipeline in the middle of sending emails, restart it, and send every email once.

    python examples/crash_resume.py

No framework and no Redis to install: the ledger starts its embedded Redis in ./.agentledger/.
The child process is killed with SIGKILL right after the mail server accepted the second email
and before that step's outcome was recorded: the worst moment. The restarted run replays what
was recorded and re-runs the in-doubt send with the same idempotency key, which the mail server
(like Stripe's or Postmark's APIs) uses to drop the duplicate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import agentledger
from agentledger import Ledger

RUN_ID = "demo-order-42"
HERE = Path(".agentledger")
OUTBOX = HERE / "demo-outbox.jsonl"  # the "mail server": one line per accepted email
EXECUTED = HERE / "demo-executed.jsonl"  # what each process executed, for the report
TEAM = ["alice@example.com", "bob@example.com", "carol@example.com"]


def log_executed(what: str) -> None:
    with EXECUTED.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "what": what}) + "\n")


def mail_server_accept(to: str, body: str, idempotency_key: str) -> bool:
    """A mail API that honours idempotency keys: a repeated key is not delivered again."""
    seen = {json.loads(line)["key"] for line in OUTBOX.read_text().splitlines()} if OUTBOX.exists() else set()
    if idempotency_key in seen:
        return False
    with OUTBOX.open("a") as f:
        f.write(json.dumps({"to": to, "body": body, "key": idempotency_key}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


@agentledger.step
def fetch_order(order_id: str) -> dict[str, object]:
    log_executed(f"fetch_order({order_id})")
    return {"id": order_id, "total": 42.0, "items": ["keyboard", "mouse"]}


@agentledger.step
def write_summary(order: dict[str, object]) -> str:
    log_executed("write_summary")
    return f"Order {order['id']} ({', '.join(order['items'])}) ships today."  # type: ignore[arg-type]


@agentledger.step(in_doubt="rerun")
def send_email(to: str, body: str) -> str:
    key = agentledger.current_idempotency_key()
    assert key is not None
    delivered = mail_server_accept(to, body, key)
    log_executed(f"send_email({to})" + ("" if delivered else " - duplicate dropped by key"))
    if to == TEAM[1] and os.environ.get("DEMO_CRASH") == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # the crash: the email left, its outcome did not
    return f"sent to {to}"


def pipeline() -> None:
    ledger = Ledger.from_url()  # AGENTLEDGER_URL, else the embedded Redis
    with ledger.run(RUN_ID):
        order = fetch_order("42")
        summary = write_summary(order)
        for to in TEAM:
            send_email(to, summary)


def main() -> int:
    if sys.argv[1:] == ["--child"]:
        pipeline()
        return 0
    HERE.mkdir(exist_ok=True)
    ledger = Ledger.from_url()
    ledger.delete_run(RUN_ID)
    for f in (OUTBOX, EXECUTED):
        f.unlink(missing_ok=True)

    print("1) start the pipeline in a child process; it dies (SIGKILL) inside the 2nd email")
    first = subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, "DEMO_CRASH": "1"})
    print(f"   child exited with {first.returncode} (-9 = killed by SIGKILL)")
    print("2) start it again with the same run id, in a fresh process")
    second = subprocess.run([sys.executable, __file__, "--child"])
    print(f"   child exited with {second.returncode}")

    print("\nWhat each process executed:")
    pids: list[int] = []
    for line in EXECUTED.read_text().splitlines():
        entry = json.loads(line)
        if entry["pid"] not in pids:
            pids.append(entry["pid"])
        print(f"   process {pids.index(entry['pid']) + 1}: {entry['what']}")
    print("\nThe run's steps, as `agentledger show` prints them:")
    from agentledger._cli import main as cli

    cli(["show", RUN_ID])
    sent = [json.loads(line)["to"] for line in OUTBOX.read_text().splitlines()]
    print(f"\nOutbox: {len(sent)} emails for {len(TEAM)} recipients: {', '.join(sent)}")
    ok = sorted(sent) == sorted(TEAM) and second.returncode == 0
    print("Every email was sent exactly once." if ok else "DUPLICATE OR MISSING EMAILS")
    run = ledger.get_run(RUN_ID)
    print(f"Run status: {run.status if run else 'missing'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
