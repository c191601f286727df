"""CLI commands for workers: ``agentledger worker APP``, ``workers``, ``retry RUN``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ._app import App
from ._errors import LedgerError
from ._ledger import Ledger
from ._queue import RunQueue

__all__ = ["add_commands", "load_app", "run_command"]

COMMANDS = ("worker", "workers", "retry")


def add_commands(sub: Any) -> None:
    """Add the worker commands to the ``agentledger`` parser's subcommands."""
    w = sub.add_parser("worker", help="run an app's queued runs (module:attribute)")
    w.add_argument("app", help="where the App is, as module:attribute (e.g. myproject.app:app)")
    w.add_argument("--concurrency", type=int, default=4,
                   help="runs at once: threads for sync pipelines, tasks for async ones")
    w.add_argument("--name", help="the worker's id (default: host:pid:random)")
    sub.add_parser("workers", help="live workers and the runs each executes")
    r = sub.add_parser("retry", help="queue a failed run again")
    r.add_argument("run_id")


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (the current directory is importable, as with uvicorn)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"APP must be module:attribute, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, App):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not an agentledger.App")
    return obj


def _ms(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000)) if ts else "-"


Table = Callable[[list[list[str]], list[str], TextIO], None]


def run_command(args: argparse.Namespace, out: TextIO, table: Table) -> int:
    if args.command == "worker":
        from ._worker import serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        try:
            app = load_app(args.app)
        except (ImportError, ValueError) as e:
            print(f"agentledger: {e}", file=sys.stderr)
            return 2
        serve(app, concurrency=args.concurrency, name=args.name, app_name=args.app)
        return 0
    ledger = Ledger.from_url(args.url, prefix=args.prefix, redis_retries=2)
    try:
        app = App(ledger, shards=RunQueue.stored_shards(ledger))
        if args.command == "workers":
            return _workers(app, args, out, table)
        return _retry(app, args, out)
    except LedgerError as e:
        print(f"agentledger: {e}", file=sys.stderr)
        return 1
    finally:
        ledger.close()


def _workers(app: App, args: argparse.Namespace, out: TextIO, table: Table) -> int:
    found = app.queue.workers()
    if args.json:
        print(json.dumps([{f: getattr(w, f) for f in w.__slots__} for w in found], indent=2),
              file=out)
        return 0
    table([[w.id, w.state, w.app or "-", f"{len(w.runs)}/{w.concurrency}", _ms(w.started),
             _ms(w.beat), ", ".join(w.runs)[:60]] for w in found],
           ["WORKER", "STATE", "APP", "BUSY", "STARTED", "BEAT", "RUNS"], out)
    return 0


def _retry(app: App, args: argparse.Namespace, out: TextIO) -> int:
    app.retry(args.run_id)
    print(json.dumps({"run_id": args.run_id, "queued": True}) if args.json
          else f"queued run {args.run_id!r} again", file=out)
    return 0
