"""The ``agentledger`` command: look at runs and steps, decide approvals, clean up.

Whatever a user can get wrong (a URL, a password, a port, a missing binary) ends in one line on
stderr, ``agentledger: ...``, and a non-zero status; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import redis

from . import _cli_worker, _embedded
from ._display import how_text, outcome_text, plain, preview_text
from ._errors import LedgerError
from ._ledger import Ledger, PendingApproval
from ._records import RunRecord
from ._suggest import command

__all__ = ["main"]

# Options every command takes, before or after the command's name (`agentledger runs --json`).
_GLOBAL_DEFAULTS: dict[str, Any] = {"url": None, "prefix": "agentledger", "json": False,
                                    "home": None, "url_file": None}

APPROVE_HELP = """\
Record a person's decision on a waiting step; the run continues when started again.

An approval (agentledger.approval / a LangGraph interrupt): approve it, or --reject it;
--payload is the edited arguments or the resume value.

An in-doubt step (it started, the process died, nobody knows if its effect happened) means
one of three things:
  approve               the effect did not happen: run the step again
  approve --payload V   the effect happened and V (JSON) is its result: record it, do not re-run
  approve --reject      fail the step (the run sees StepRejected)
"""


class CliError(LedgerError):
    """A user error the command reports in one line."""


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
        raise CliError(f"no run {a.run_id!r} under prefix {a.prefix!r}")
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
        rows.append([str(s.seq), str(s.kind), _short(s.name, 28), str(s.status), str(s.attempts),
                     dur, how_text(s), _short(preview_text(s), 36), _short(outcome_text(s), 44)])
    _table(rows, ["#", "KIND", "NAME", "STATUS", "ATT", "DURATION", "HOW", "INPUTS", "RESULT"], out)
    for s in steps:
        if s.conflict:
            print(f"CONFLICT #{s.seq} {s.key}: {s.conflict_text()}", file=out)
    return 0


def _what(p: PendingApproval) -> str:
    return "in doubt" if p.doubt or p.status == "running" else str(p.kind)


def _cmd_approvals(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    pending = ledger.pending_approvals(a.run_id)
    if a.json:
        print(json.dumps([p.model_dump(mode="json") for p in pending], indent=2, default=str),
              file=out)
        return 0
    rows = [[p.run_id, p.key, _what(p), _ms(p.started),
             _short(json.dumps(plain(p.payload), ensure_ascii=False, default=str)
                    if p.payload is not None else preview_text(p), 60),
             command("approve", positional=(p.run_id, p.key), prefix=a.prefix)]
            for p in pending]
    _table(rows, ["RUN", "STEP", "WHAT", "SINCE", "PAYLOAD", "DECIDE WITH"], out)
    if any(_what(p) == "in doubt" for p in pending):
        print("\nin doubt: approve = run it again; approve --payload JSON = it happened, JSON is "
              "its result; approve --reject = fail it", file=out)
    return 0


def _cmd_approve(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    payload: Any = None
    if a.payload is not None:
        try:
            payload = json.loads(a.payload)
        except ValueError as e:
            raise CliError(f"--payload is not JSON: {e}") from None
    key = ledger.decide(a.run_id, a.step, approved=not a.reject, by=a.by, note=a.note,
                        payload=payload)
    verdict = "rejected" if a.reject else "approved"
    if a.json:
        print(json.dumps({"run_id": a.run_id, "step": key, "decision": verdict}), file=out)
    else:
        print(f"{verdict} {key!r} of run {a.run_id!r}; a worker continues it (without workers, start the run again)", file=out)
    return 0


def _cmd_delete(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    n = ledger.delete_run(a.run_id, force=a.force)
    print(json.dumps({"deleted_keys": n}) if a.json else f"deleted {n} keys of run {a.run_id!r}",
          file=out)
    return 0 if n else 1


def _cmd_gc(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    n = ledger.gc()
    print(json.dumps({"dropped": n}) if a.json else f"dropped {n} expired runs from the index",
          file=out)
    return 0


def _cmd_serve(ledger: Ledger, a: argparse.Namespace, out: TextIO) -> int:
    try:
        from .web._serve import serve
    except ImportError as e:
        raise CliError(f"the console needs the [web] extra ({e.name} is missing): "
                       "pip install 'agentledger[web]'") from None
    serve(ledger, out, host=a.host, port=a.port, allow_hosts=a.allow_host, token=a.token,
          read_only=a.read_only)
    return 0


def _cmd_server(a: argparse.Namespace, out: TextIO) -> int:
    if a.action == "start":
        home = _embedded.find_home(a.home) or _embedded.new_home(a.home)
        print(_embedded.embedded_url(home), file=out)
        return 0
    found = _embedded.find_home(a.home)
    if found is None:
        raise CliError(_embedded.not_found_message(a.home))
    if a.action == "stop":
        print("stopped" if _embedded.stop_embedded(found)
              else f"the embedded Redis in {found} was not running", file=out)
        return 0
    status = _embedded.server_status(found)
    if a.json:
        print(json.dumps(status, indent=2), file=out)
    else:
        for name, value in status.items():
            print(f"{name + ':':<10} {value if value is not None else '-'}", file=out)
    return 0 if status["running"] else 1


_COMMANDS: dict[str, Callable[[Ledger, argparse.Namespace, TextIO], int]] = {
    "serve": _cmd_serve, "runs": _cmd_runs, "show": _cmd_show, "approvals": _cmd_approvals,
    "approve": _cmd_approve, "delete": _cmd_delete, "gc": _cmd_gc}


def _global_options(top: bool) -> argparse.ArgumentParser:
    # On the subcommands the defaults are SUPPRESS, so that an option given before the command
    # is not reset by the subcommand's own default.
    p = argparse.ArgumentParser(add_help=False)
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("--url", default=d(None),
                   help="Redis URL (default: AGENTLEDGER_URL, else the embedded Redis); one with "
                        "a password is better given by --url-file or AGENTLEDGER_URL, which "
                        "`ps` does not show")
    p.add_argument("--url-file", default=d(None), metavar="PATH",
                   help="read the Redis URL from the first line of this file")
    p.add_argument("--prefix", default=d("agentledger"), help="key prefix (default: agentledger)")
    p.add_argument("--home", default=d(None),
                   help="the embedded ledger's folder (default: AGENTLEDGER_HOME, else the "
                        "nearest .agentledger/ in this folder or its parents)")
    p.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    return p


def _parser() -> argparse.ArgumentParser:
    common = _global_options(top=False)
    p = argparse.ArgumentParser(prog="agentledger", parents=[_global_options(top=True)],
                                description="Look at durable runs and steps; decide approvals.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], **kw)

    r = add("runs", "list runs, newest first")
    r.add_argument("--status", choices=["running", "waiting", "completed", "failed", "stalled"])
    r.add_argument("--limit", type=int, default=50)
    add("show", "a run's step timeline").add_argument("run_id")
    add("approvals", "steps waiting for a person").add_argument("run_id", nargs="?")
    a = add("approve", "record a decision on a waiting step", description=APPROVE_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("run_id")
    a.add_argument("step", nargs="?", help="step key (default: the run's only waiting step)")
    a.add_argument("--reject", action="store_true", help="fail the step")
    a.add_argument("--by", help="who decides")
    a.add_argument("--note", help="a note, or the human feedback text")
    a.add_argument("--payload", help="JSON: edited arguments / the resume value / the result "
                   "of an in-doubt step whose effect happened")
    de = add("delete", "delete everything a run wrote")
    de.add_argument("run_id")
    de.add_argument("--force", action="store_true",
                    help="delete even while a process holds the run (it is fenced out)")
    add("gc", "drop expired runs from the index")
    w = add("serve", "the operator console: runs, timelines, approvals (needs [web])")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8765)
    w.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this Host name (repeatable)")
    w.add_argument("--token", default=None,
                   help="the console token (default: AGENTLEDGER_CONSOLE_TOKEN, else a new one "
                        "printed once)")
    w.add_argument("--read-only", action="store_true", help="show runs; decide nothing")
    sv = add("server", "the embedded Redis: start (print its URL), stop, status")
    sv.add_argument("action", choices=["start", "stop", "status"])
    _cli_worker.add_commands(_WithGlobalOptions(sub, common))
    return p


class _WithGlobalOptions:
    """Subcommands added by other modules take the global options after their name too."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser) -> None:
        self._sub, self._common = sub, common

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._sub.add_parser(name, parents=[self._common], **kw)
        return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    for name, default in _GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def _url(a: argparse.Namespace) -> str:
    """The URL to read: --url, AGENTLEDGER_URL, else an existing embedded ledger (never a new
    one: these commands read what a program recorded)."""
    url = a.url or _url_from_file(a.url_file) or os.environ.get("AGENTLEDGER_URL") or None
    if url is not None:
        return str(url)
    home = _embedded.find_home(a.home)
    if home is None:
        raise CliError(_embedded.not_found_message(a.home))
    return _embedded.embedded_url(home)


def _url_from_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() or None
    except OSError as e:
        raise CliError(f"cannot read --url-file: {e}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, redis.AuthenticationError):
        return f"authentication failed: {text}"
    if isinstance(e, redis.ResponseError | redis.exceptions.RedisClusterException):
        return f"Redis refused: {text}"
    return text or type(e).__name__


def _stdout_closed() -> int:
    # The reader went away (`agentledger show --json RUN | head`): say nothing, as cat and git
    # do, and keep the interpreter from complaining when it flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parse(argv)
    try:
        if args.command == "server":
            return _cmd_server(args, out)
        if args.command in _cli_worker.COMMANDS:
            if args.command != "worker":  # a worker records; the others read what exists
                args.url = _url(args)
            return _cli_worker.run_command(args, out, _table)
        # Reading an evicting Redis is allowed (with a warning); a wrong password, or a URL
        # that does not fit the server, fails here at once and by name.
        ledger = Ledger.from_url(_url(args), prefix=args.prefix, redis_retries=2,
                                 allow_evicting_redis=True)
        try:
            ledger.check_server()
            return _COMMANDS[args.command](ledger, args, out)
        finally:
            ledger.close()
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        return 130
    except (LedgerError, redis.RedisError, redis.exceptions.RedisClusterException, OSError,
            ValueError) as e:
        print(f"agentledger: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
