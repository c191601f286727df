"""``agentledger serve``: a read-only web page of runs, step timelines and pending approvals.

Read-only on purpose: deciding approvals changes what a run does, so it stays with the CLI and
the Python API, which carry who decided. Binds to 127.0.0.1 unless told otherwise.

Only requests addressed to the host it binds are answered (plus names given with
``--allow-host``): a web page elsewhere that points its own DNS name at 127.0.0.1 (DNS
rebinding) gets 403, not the ledger's tool arguments and results. Links carry run ids
URL-encoded, and commands shown for copy-paste are shell-quoted.
"""

from __future__ import annotations

import html
import ipaddress
import json
import socket
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis

from ._display import how_text, outcome_text, plain, preview_text
from ._errors import LedgerError
from ._ledger import Ledger
from ._queue import RunQueue, WorkerInfo
from ._records import RunRecord
from ._suggest import command

__all__ = ["LedgerHTTPServer", "make_server"]

IN_DOUBT_MEANING = ("An in-doubt step started and recorded no outcome, so nobody knows whether "
                    "its effect happened. <b>approve</b> = the effect did not happen: run it "
                    "again; <b>approve --payload JSON</b> = it happened and JSON is its result; "
                    "<b>approve --reject</b> = fail the step.")

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-top:1em}
th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f4f4f4} code{font-size:12px} a{color:#0645ad;text-decoration:none}
.completed{color:#1a7f37}.failed{color:#cf222e}.waiting{color:#9a6700}.running{color:#0969da}
.stalled{color:#cf222e;font-weight:bold} nav a{margin-right:1em}
"""


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _esc(value: object, width: int = 120) -> str:
    text = str(value if value is not None else "")
    if len(text) > width:
        text = text[: width - 1] + "…"
    return html.escape(text)


def _href(run_id: str) -> str:
    return html.escape("/runs/" + quote(run_id, safe=""), quote=True)


def _status(ledger: Ledger, run: RunRecord) -> str:
    return "stalled" if ledger.is_stalled(run) else str(run.status)


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><nav><a href='/'>runs</a>"
            f"<a href='/approvals'>approvals</a><a href='/workers'>workers</a></nav><h1>{html.escape(title)}</h1>{body}"
            "</body></html>").encode()


class _Handler(BaseHTTPRequestHandler):
    ledger: Ledger

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _host_allowed(self) -> bool:
        host = self.headers.get("Host")
        if not host:
            return False
        try:  # "name:port", "[::1]:port", "name"
            name = urlsplit("//" + host).hostname or ""
        except ValueError:
            return False
        server = self.server
        return isinstance(server, LedgerHTTPServer) and server.allows(name)

    def do_GET(self) -> None:
        if not self._host_allowed():
            text = (f"agentledger serve: Host {self.headers.get('Host')!r} is not allowed; "
                    "start it with --allow-host NAME to answer that name\n")
            self._send(403, text.encode(), "text/plain; charset=utf-8")
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        query = parse_qs(url.query)
        try:
            if parts[:1] == ["api"]:
                self._send(200, json.dumps(self._api(parts[1:], query), default=str).encode(),
                           "application/json")
            elif not parts:
                self._send(200, self._runs(query.get("status", [None])[0]), "text/html; charset=utf-8")
            elif parts[0] == "runs" and len(parts) == 2:
                self._send(200, self._run(parts[1]), "text/html; charset=utf-8")
            elif parts == ["approvals"]:
                self._send(200, self._approvals(), "text/html; charset=utf-8")
            elif parts == ["workers"]:
                self._send(200, self._workers(), "text/html; charset=utf-8")
            else:
                self._send(404, _page("not found", ""), "text/html; charset=utf-8")
        except KeyError as e:
            self._send(404, _page(f"no run {e.args[0]}", ""), "text/html; charset=utf-8")
        except (LedgerError, ValueError, redis.RedisError, OSError) as e:
            self._send(500, _page("error", f"<p>{html.escape(' '.join(str(e).split()))}</p>"),
                       "text/html; charset=utf-8")

    def _api(self, parts: list[str], query: dict[str, list[str]]) -> Any:
        if parts == ["runs"]:
            return [r.model_dump(mode="json") for r in
                    self.ledger.list_runs(status=query.get("status", [None])[0])]
        if len(parts) == 2 and parts[0] == "runs":
            run = self.ledger.get_run(parts[1])
            if run is None:
                raise KeyError(parts[1])
            return {"run": run.model_dump(mode="json"),
                    "steps": [s.model_dump(mode="json") for s in self.ledger.steps(parts[1])]}
        if parts == ["approvals"]:
            return [p.model_dump(mode="json") for p in self.ledger.pending_approvals()]
        if parts == ["workers"]:
            return [{f: getattr(w, f) for f in w.__slots__} for w in self._live_workers()]
        raise KeyError("/".join(parts))

    def _live_workers(self) -> list[WorkerInfo]:
        return RunQueue(self.ledger, RunQueue.stored_shards(self.ledger)).workers()

    def _workers(self) -> bytes:
        rows = "".join(
            f"<tr><td>{_esc(w.id)}</td><td>{_esc(w.state)}</td><td>{_esc(w.app or '-')}</td>"
            f"<td>{len(w.runs)}/{w.concurrency}</td><td>{_when(w.started)}</td>"
            f"<td>{_when(w.beat)}</td><td>"
            + ", ".join(f"<a href='{_href(r)}'>{_esc(r)}</a>" for r in w.runs) + "</td></tr>"
            for w in self._live_workers())
        return _page("workers", "<table><tr><th>worker</th><th>state</th><th>app</th>"
                     "<th>busy</th><th>started</th><th>heartbeat</th><th>runs</th></tr>"
                     f"{rows}</table>")

    def _runs(self, status: str | None) -> bytes:
        rows = "".join(
            f"<tr><td><a href='{_href(r.run_id)}'>{_esc(r.run_id)}</a></td>"
            f"<td class='{_status(self.ledger, r)}'>{_status(self.ledger, r)}</td><td>{_esc(r.kind or '-')}</td>"
            f"<td>{r.steps_done}/{r.steps_total}</td><td>{_when(r.created)}</td>"
            f"<td>{_when(r.updated)}</td><td>{_esc(r.last_error, 80)}</td></tr>"
            for r in self.ledger.list_runs(status=status, limit=500))
        filters = " ".join(f"<a href='/?status={s}'>{s}</a>" for s in
                           ("running", "waiting", "completed", "failed", "stalled"))
        return _page("agentledger runs", f"<p>{filters}</p><table><tr><th>run</th><th>status</th>"
                     "<th>kind</th><th>steps</th><th>created</th><th>updated</th>"
                     f"<th>last error</th></tr>{rows}</table>")

    def _run(self, run_id: str) -> bytes:
        run = self.ledger.get_run(run_id)
        if run is None:
            raise KeyError(run_id)
        rows = []
        for s in self.ledger.steps(run_id):
            how = how_text(s)
            dur = f"{s.duration_ms} ms" if s.duration_ms is not None else "-"
            rows.append(f"<tr><td>{s.seq}</td><td>{_esc(s.kind)}</td><td><code>{_esc(s.key, 80)}</code></td>"
                        f"<td class='{s.status}'>{s.status}</td><td>{s.attempts}</td><td>{dur}</td>"
                        f"<td>{_esc(how)}</td><td><code>{_esc(preview_text(s))}</code></td>"
                        f"<td><code>{_esc(outcome_text(s))}</code></td></tr>")
        head = (f"<p>status <b class='{_status(self.ledger, run)}'>{_status(self.ledger, run)}</b> · kind {_esc(run.kind or '-')}"
                f" · steps {run.steps_done}/{run.steps_total} · created {_when(run.created)} · "
                f"updated {_when(run.updated)}</p>")
        if run.last_error:
            head += f"<p class='failed'>last error: {_esc(run.last_error, 400)}</p>"
        for s in self.ledger.steps(run_id):
            if s.conflict:
                head += (f"<p class='failed'>conflict on step #{s.seq} <code>{_esc(s.key, 80)}"
                         f"</code>: {_esc(s.conflict_text(), 400)}</p>")
        return _page(f"run {run_id}", head + "<table><tr><th>#</th><th>kind</th><th>step</th>"
                     "<th>status</th><th>attempts</th><th>duration</th><th>how</th><th>inputs</th>"
                     f"<th>result</th></tr>{''.join(rows)}</table>")

    def _approvals(self) -> bytes:
        rows = "".join(
            f"<tr><td><a href='{_href(p.run_id)}'>{_esc(p.run_id)}</a></td>"
            f"<td><code>{_esc(p.key, 80)}</code></td><td>{'in doubt' if p.doubt or p.status == 'running' else p.kind}</td>"
            f"<td>{_when(p.started)}</td><td><code>{_esc(json.dumps(plain(p.payload), default=str, ensure_ascii=False) if p.payload is not None else preview_text(p), 200)}</code></td>"
            f"<td><code>{_esc(command('approve', positional=(p.run_id, p.key), prefix=self.ledger.prefix), 400)}</code></td></tr>"
            for p in self.ledger.pending_approvals())
        return _page("pending approvals", f"<p>{IN_DOUBT_MEANING}</p><table><tr><th>run</th>"
                     "<th>step</th><th>what</th><th>since</th><th>payload</th><th>decide with</th>"
                     f"</tr>{rows}</table>")


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


class LedgerHTTPServer(ThreadingHTTPServer):
    """The page's HTTP server: answers only requests addressed to the host it binds."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 allow_hosts: Iterable[str] = ()) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.display_host = f"[{host}]" if ":" in host else host
        self.allowed = {host.lower().strip("[]"), *(h.lower().strip("[]") for h in allow_hosts)}
        self.wildcard = host in ("", "0.0.0.0", "::")
        if self.wildcard or _is_loopback(host):
            self.allowed |= _LOOPBACK_NAMES | {"127.0.0.1", "::1"}
        if self.wildcard:
            self.allowed.add(socket.gethostname().lower())

    def allows(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        if name in self.allowed:
            return True
        # Bound to every interface, any IP literal names this machine; DNS rebinding needs a
        # name, and names are only those bound or given with --allow-host.
        return self.wildcard and _is_ip(name)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(ledger: Ledger, host: str = "127.0.0.1", port: int = 8765,
                allow_hosts: Iterable[str] = ()) -> LedgerHTTPServer:
    """The page's server on ``host:port`` (not yet serving): ``serve_forever()`` runs it."""
    handler = type("Handler", (_Handler,), {"ledger": ledger})
    return LedgerHTTPServer((host, port), handler, allow_hosts)
