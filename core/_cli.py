"""The ``agentledger`` command: look at runs and steps, decide approvals, clean up."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import _cli_worker
from ._errors import LedgerError
from ._ledger import Ledger
from ._records import RunRecord

__all__ = ["main"]


def _ms(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000)) if ts else "-"


def _short(text: str | None, width: int = 48) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[list[str]], head: list[str], out: TextIO) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def _run_row(ledger: Ledger, r: RunRecord, now: int) -> list[str]:
    status = "stalled" if ledger.is_stalled(r, now) else str(r.status)
    return [r.run_id, status, r.kind or "-", f"{r.steps_done}/{r.steps_total}", _ms(r.created),
            _ms(r.updated), _short(r.last_error, 40)]


def _cmd_runs(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    runs = ledger.list_runs(status=a.status, limit=a.limit)
    if a.json:
        print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2), file=out)
        return 0
    now = int(time.time() * 1000)
    _table([_run_row(ledger, r, now) for r in runs],
           ["RUN", "STATUS", "KIND", "STEPS", "CREATED", "UPDATED", "LAST ERROR"], out)
    return 0


def _cmd_show(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    run = ledger.get_run(a.run_id)
    if run is None:
        print(f"no run {a.run_id!r}", file=sys.stderr)
        return 1
    steps = ledger.steps(a.run_id)
    if a.json:
        print(json.dumps({"run": run.model_dump(mode="json"),
                          "steps": [s.model_dump(mode="json") for s in steps]}, indent=2), file=out)
        return 0
    now = int(time.time() * 1000)
    row = _run_row(ledger, run, now)
    print(f"run {run.run_id}  status {row[1]}  kind {row[2]}  steps {row[3]}  "
          f"created {row[4]}  updated {row[5]}", file=out)
    if run.last_error:
        print(f"last error: {run.last_error}", file=out)
    rows = []
    for s in steps:
        dur = f"{s.duration_ms} ms" if s.duration_ms is not None else "-"
        how = "executed" if s.attempts <= 1 else f"executed x{s.attempts}"
        if s.replays:
            how += f", replayed x{s.replays}"
        rows.append([str(s.seq), str(s.kind), _short(s.name, 28), str(s.status), str(s.attempts),
                     dur, how, _short(s.preview, 36), _short(s.outcome_text(), 44)])
    _table(rows, ["#", "KIND", "NAME", "STATUS", "ATT", "DURATION", "HOW", "INPUTS", "RESULT"], out)
    return 0


def _cmd_approvals(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    pending = ledger.pending_approvals(a.run_id)
    if a.json:
        print(json.dumps([p.model_dump(mode="json") for p in pending], indent=2, default=str),
              file=out)
        return 0
    rows = [[p.run_id, p.key, "in doubt" if p.doubt or p.status == "running" else str(p.kind),
             _ms(p.started), _short(json.dumps(p.payload, ensure_ascii=False, default=str)
                                    if p.payload is not None else p.preview, 60)]
            for p in pending]
    _table(rows, ["RUN", "STEP", "WHAT", "SINCE", "PAYLOAD"], out)
    return 0


def _cmd_approve(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    payload: Any = None
    if a.payload is not None:
        try:
            payload = json.loads(a.payload)
        except ValueError as e:
            print(f"--payload is not JSON: {e}", file=sys.stderr)
            return 2
    key = ledger.decide(a.run_id, a.step, approved=not a.reject, by=a.by, note=a.note,
                        payload=payload)
    verdict = "rejected" if a.reject else "approved"
    if a.json:
        print(json.dumps({"run_id": a.run_id, "step": key, "decision": verdict}), file=out)
    else:
        print(f"{verdict} {key!r} of run {a.run_id!r}; start the run again to continue", file=out)
    return 0


def _cmd_delete(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    n = ledger.delete_run(a.run_id)
    print(json.dumps({"deleted_keys": n}) if a.json else f"deleted {n} keys of run {a.run_id!r}",
          file=out)
    return 0 if n else 1


def _cmd_gc(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    n = ledger.gc()
    print(json.dumps({"dropped": n}) if a.json else f"dropped {n} expired runs from the index",
          file=out)
    return 0


def _cmd_server(a: argparse.Namespace, out: TextIO) -> int:
    from ._embedded import embedded_url, stop_embedded

    if a.action == "stop":
        print("stopped" if stop_embedded() else "the embedded Redis was not running", file=out)
    else:
        print(embedded_url(), file=out)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentledger",
                                description="Look at durable runs and steps; decide approvals.")
    p.add_argument("--url", help="Redis URL (default: AGENTLEDGER_URL, else the embedded Redis)")
    p.add_argument("--prefix", default="agentledger", help="key prefix (default: agentledger)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("runs", help="list runs, newest first")
    r.add_argument("--status", choices=["running", "waiting", "completed", "failed", "stalled"])
    r.add_argument("--limit", type=int, default=50)
    s = sub.add_parser("show", help="a run's step timeline")
    s.add_argument("run_id")
    ap = sub.add_parser("approvals", help="steps waiting for a person")
    ap.add_argument("run_id", nargs="?")
    a = sub.add_parser("approve", help="record a decision on a waiting step")
    a.add_argument("run_id")
    a.add_argument("step", nargs="?", help="step key (default: the run's only waiting step)")
    a.add_argument("--reject", action="store_true")
    a.add_argument("--by", help="who decides")
    a.add_argument("--note", help="a note, or the human feedback text")
    a.add_argument("--payload", help="JSON: edited arguments / the resume value")
    d = sub.add_parser("delete", help="delete everything a run wrote")
    d.add_argument("run_id")
    sub.add_parser("gc", help="drop expired runs from the index")
    w = sub.add_parser("serve", help="a read-only web page of runs, steps and approvals")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8765)
    sv = sub.add_parser("server", help="the embedded Redis: start (print its URL) or stop")
    sv.add_argument("action", choices=["start", "stop"])
    _cli_worker.add_commands(sub)
    return p


def _cmd_serve(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    from ._web import make_server

    server = make_server(ledger, a.host, a.port)
    print(f"agentledger: serving http://{a.host}:{server.server_address[1]}/ (Ctrl-C stops)",
          file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


_COMMANDS = {"serve": _cmd_serve, "runs": _cmd_runs, "show": _cmd_show, "approvals": _cmd_approvals,
             "approve": _cmd_approve, "delete": _cmd_delete, "gc": _cmd_gc}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    if args.command == "server":
        return _cmd_server(args, out)
    if args.command in _cli_worker.COMMANDS:
        return _cli_worker.run_command(args, out, _table)
    try:
        ledger = Ledger.from_url(args.url, prefix=args.prefix, redis_retries=2)
        try:
            return _COMMANDS[args.command](ledger, args, out)
        finally:
            ledger.close()
    except (LedgerError, ValueError) as e:
        print(f"agentledger: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
