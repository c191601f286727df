"""The operator console as an ASGI app (FastAPI + Jinja2): runs, a run's timeline, approvals.

``app(ledger, token=...)`` builds it; ``agentledger serve`` runs it under uvicorn, and a user's
own app can mount it (``outer.mount("/ledger", agentledger.web.app(ledger, token=...))``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import redis
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from .._display import plain
from .._errors import LedgerError
from .._ledger import Ledger, PendingApproval
from .._queue import RunQueue
from .._suggest import command
from ._query import STATUSES, RunFilter, count_statuses, page_runs
from ._security import NONCE_COOKIE, SESSION_COOKIE, HostCheck, Secrets
from ._timeline import attempts_by_step, step_detail, step_state, timeline

__all__ = ["app"]

_HERE = Path(__file__).parent
_templates = Jinja2Templates(directory=str(_HERE / "templates"))


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _ms(text: str | None, what: str) -> int | None:
    """A time filter: ms since the epoch, or an ISO date/time as a browser's inputs send it."""
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise HTTPException(400, f"{what}={text!r} is neither ms since the epoch nor an ISO "
                                 "date/time") from None


_templates.env.filters["when"] = _when
_templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False,
                                                         default=str)


class DecisionIn(BaseModel):
    step: str | None = None
    approved: bool = True
    by: str
    note: str | None = None
    payload: Any = None


def app(ledger: Ledger, *, token: str, read_only: bool = False,
        hosts: Iterable[str] | None = None) -> FastAPI:
    """The console over ``ledger``. ``token`` guards every page and call; ``read_only`` turns
    decisions off; ``hosts`` (the bound address, plus names allowed) turns the Host check on:
    leave it None when mounting inside an app that checks Host itself."""
    keys = Secrets(token)
    counts = _CountsCache(ledger)
    host_check = HostCheck(*_split_hosts(hosts)) if hosts is not None else None
    api = FastAPI(title="agentledger console", version="1", openapi_url="/api/openapi.json",
                  docs_url=None, redoc_url=None)
    api.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    @api.middleware("http")
    async def check_host(request: Request, call_next: Any) -> Response:
        if host_check is not None and not host_check.allows(request.headers.get("host")):
            return Response(f"agentledger console: Host {request.headers.get('host')!r} is not "
                            "allowed; start it with --allow-host NAME to answer that name\n",
                            status_code=403, media_type="text/plain")
        response: Response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
        return response

    def authed(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return keys.token_ok(header[7:].strip())
        return keys.session_ok(request.cookies.get(SESSION_COOKIE))

    def need_api_token(request: Request) -> None:
        if not authed(request):
            raise HTTPException(401, "a console token is needed: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200
             ) -> Response:
        nonce = request.cookies.get(NONCE_COOKIE) or secrets.token_urlsafe(16)
        ctx = {"base": base(request), "csrf": keys.csrf(nonce), "read_only": read_only,
               "statuses": STATUSES, **context}
        response = _templates.TemplateResponse(request, name, ctx, status_code=status)
        if request.cookies.get(NONCE_COOKIE) != nonce:
            response.set_cookie(NONCE_COOKIE, nonce, httponly=True, samesite="strict",
                                path=base(request) or "/")
        return response

    def login_redirect(request: Request) -> Response:
        return RedirectResponse(base(request) + "/login?" + urlencode(
            {"next": request.url.path + ("?" + request.url.query if request.url.query else "")}),
            status_code=303)

    def check_form(request: Request, csrf: str) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null":
            netloc = urlsplit(origin).netloc
            if netloc != request.headers.get("host"):
                raise HTTPException(403, f"cross-origin form from {origin!r}")
        if not keys.csrf_ok(request.cookies.get(NONCE_COOKIE), csrf):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")

    # ---- login ----------------------------------------------------------------------------
    @api.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/", token: str | None = None) -> Response:
        if token is not None and keys.token_ok(token):
            return _signed_in(request, base(request), next)
        return page(request, "login.html", {"next": next, "wrong": token is not None, "login": True},
                    status=401 if token is not None else 200)

    @api.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form()], csrf: Annotated[str, Form()],
              next: Annotated[str, Form()] = "/") -> Response:
        check_form(request, csrf)
        if not keys.token_ok(token):
            return page(request, "login.html", {"next": next, "wrong": True, "login": True}, status=401)
        return _signed_in(request, base(request), next)

    def _signed_in(request: Request, root: str, next: str) -> Response:
        # Only a path of this console: never an open redirect to another site.
        # ("/\\host" is read as "//host" by browsers.)
        local = next.startswith("/") and not next.startswith(("//", "/\\")) and "\\" not in next
        target = next if local else "/"
        if root and not target.startswith(root):
            target = root + target
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, keys.session, httponly=True, samesite="strict",
                            path=root or "/")
        return response

    @api.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: Annotated[str, Form()]) -> Response:
        check_form(request, csrf)
        response = RedirectResponse(base(request) + "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=base(request) or "/")
        return response

    # ---- pages ----------------------------------------------------------------------------
    def run_filter(status: str | None, kind: str | None, since: str | None,
                   until: str | None, q: str | None) -> RunFilter:
        if status and status not in STATUSES:
            raise HTTPException(400, f"status={status!r} is not one of {', '.join(STATUSES)}")
        return RunFilter(status=status or None, kind=kind or None,
                         since_ms=_ms(since, "since"), until_ms=_ms(until, "until"),
                         search=q or None)

    @api.get("/", include_in_schema=False)
    def runs_page(request: Request, status: str | None = None, kind: str | None = None,
                  since: str | None = None, until: str | None = None, q: str | None = None,
                  cursor: str | None = None, fragment: bool = False) -> Response:
        if not authed(request):
            return login_redirect(request)
        where = run_filter(status, kind, since, until, q)
        try:
            found = page_runs(ledger, where, cursor, limit=50)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        args = {k: v for k, v in {"status": status, "kind": kind, "since": since,
                                  "until": until, "q": q}.items() if v}
        ctx = {"page": found, "counts": counts.get(), "args": args,
               "query": urlencode(args), "cursor": cursor,
               "next_query": urlencode({**args, "cursor": found.cursor}) if found.cursor else None}
        return page(request, "runs_rows.html" if fragment else "runs.html", ctx)

    def load_run(run_id: str) -> tuple[Any, list[Any]]:
        run = ledger.get_run(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return run, ledger.steps(run_id)

    @api.get("/run", include_in_schema=False)
    def run_page(request: Request, id: str, fragment: bool = False,
                 done: str | None = None) -> Response:
        if not authed(request):
            return login_redirect(request)
        run, steps = load_run(id)
        now = int(time.time() * 1000)
        status = "stalled" if ledger.is_stalled(run, now) else str(run.status)
        held = bool(run.owner) and run.lease_until > now
        ctx = {"run": run, "status": status, "steps": steps, "tl": timeline(run, steps, now),
               "states": {s.key: step_state(s, held) for s in steps},
               "pending": _pending_view(ledger.pending_approvals(id), ledger), "done": done,
               "conflicts": [s for s in steps if s.conflict]}
        return page(request, "run_live.html" if fragment else "run.html", ctx)

    @api.get("/approvals", include_in_schema=False)
    def approvals_page(request: Request, fragment: bool = False) -> Response:
        if not authed(request):
            return login_redirect(request)
        return page(request, "approvals_live.html" if fragment else "approvals.html",
                    {"pending": _pending_view(ledger.pending_approvals(), ledger)})

    @api.get("/workers", include_in_schema=False)
    def workers_page(request: Request) -> Response:
        if not authed(request):
            return login_redirect(request)
        return page(request, "workers.html", {"workers": _workers(ledger)})

    @api.post("/decide", include_in_schema=False)
    def decide_form(request: Request, run: Annotated[str, Form()],
                    step: Annotated[str, Form()], action: Annotated[str, Form()],
                    by: Annotated[str, Form()], csrf: Annotated[str, Form()],
                    note: Annotated[str, Form()] = "",
                    payload: Annotated[str, Form()] = "") -> Response:
        if not authed(request):
            raise HTTPException(401, "sign in first")
        check_form(request, csrf)
        if read_only:
            raise HTTPException(403, "this console is read-only (started with --read-only)")
        if action not in ("approve", "approve-edited", "reject"):
            raise HTTPException(400, f"action={action!r} is not approve, approve-edited or reject")
        value: Any = None
        if action == "approve-edited":
            try:
                value = json.loads(payload)
            except ValueError as e:
                raise HTTPException(400, f"the edited payload is not JSON: {e}") from None
        try:
            ledger.decide(run, step, approved=action != "reject", by=by.strip() or None,
                          note=note.strip() or None, payload=value)
        except LedgerError as e:
            raise HTTPException(409, str(e)) from None
        verdict = "rejected" if action == "reject" else "approved"
        return RedirectResponse(base(request) + "/run?" + urlencode({"id": run, "done": verdict}),
                                status_code=303)

    # ---- JSON API ---------------------------------------------------------------------------
    guard = [Depends(need_api_token)]

    @api.get("/api/runs", dependencies=guard, summary="A page of runs, newest update first")
    def api_runs(status: str | None = None, kind: str | None = None,
                 since: str | None = None, until: str | None = None,
                 q: Annotated[str | None, Query(description="a part of the run id")] = None,
                 cursor: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
        where = run_filter(status, kind, since, until, q)
        try:
            found = page_runs(ledger, where, cursor, limit=limit)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return {"runs": [{**r.model_dump(mode="json"), "shown_status": s} for r, s in found.runs],
                "cursor": found.cursor}

    @api.get("/api/counts", dependencies=guard, summary="How many runs of each status")
    def api_counts() -> dict[str, int]:
        return counts.get()

    @api.get("/api/run", dependencies=guard, summary="A run and its steps")
    def api_run(id: str) -> dict[str, Any]:
        run, steps = load_run(id)
        groups = attempts_by_step(steps)
        return {"run": run.model_dump(mode="json"),
                "steps": [step_detail(run, s, attempts=groups) for s in steps]}

    @api.get("/api/step", dependencies=guard, summary="Everything recorded about one step")
    def api_step(run: str, key: str) -> dict[str, Any]:
        record, steps = load_run(run)
        for s in steps:
            if s.key == key:
                return step_detail(record, s, attempts=attempts_by_step(steps))
        raise HTTPException(404, f"run {run!r} has no step {key!r}")

    @api.get("/api/approvals", dependencies=guard, summary="Steps waiting for a person")
    def api_approvals() -> list[dict[str, Any]]:
        return [_pending_json(p) for p in ledger.pending_approvals()]

    @api.get("/api/workers", dependencies=guard, summary="Live workers and their runs")
    def api_workers() -> list[dict[str, Any]]:
        return _workers(ledger)

    @api.post("/api/decision", dependencies=guard,
              summary="Decide a waiting step (as `agentledger approve`)")
    def api_decide(request: Request, run: str, decision: DecisionIn) -> dict[str, str]:
        if read_only:
            raise HTTPException(403, "this console is read-only (started with --read-only)")
        if not request.headers.get("authorization"):
            # A cookie alone would let another site's page post here; the API wants the token.
            raise HTTPException(403, "decisions through the API need Authorization: Bearer")
        try:
            key = ledger.decide(run, decision.step, approved=decision.approved, by=decision.by,
                                note=decision.note, payload=decision.payload)
        except LedgerError as e:
            raise HTTPException(409, str(e)) from None
        return {"run_id": run, "step": key,
                "decision": "approved" if decision.approved else "rejected"}

    @api.exception_handler(LedgerError)
    @api.exception_handler(redis.RedisError)
    async def ledger_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=500)

    return api


class _CountsCache:
    """Counts per status read every run's status (about 3 s per 100,000 runs), so a refreshing
    page reuses them for a while: at least 2 s, and at least 5 times as long as they took."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.value: dict[str, int] = {}
        self.until = 0.0

    def get(self) -> dict[str, int]:
        now = time.monotonic()
        if now >= self.until:
            self.value = count_statuses(self.ledger)
            took = time.monotonic() - now
            self.until = time.monotonic() + max(2.0, 5 * took)
        return self.value


def _split_hosts(hosts: Iterable[str]) -> tuple[str, list[str]]:
    names = list(hosts)
    return (names[0] if names else "127.0.0.1"), names[1:]


def _pending_json(p: PendingApproval) -> dict[str, Any]:
    data = p.model_dump(mode="json", exclude={"payload"})
    data["payload"] = _request_json(p.request)
    return data


def _request_json(raw: str | None) -> Any:
    # Shown as recorded (untagged JSON), never decoded into objects.
    if raw is None:
        return None
    try:
        return plain(json.loads(raw))
    except ValueError:
        return raw


def _pending_view(pending: list[PendingApproval], ledger: Ledger) -> list[dict[str, Any]]:
    return [{"run_id": p.run_id, "key": p.key, "name": p.name, "kind": str(p.kind),
             "in_doubt": bool(p.doubt) or str(p.status) == "running", "started": p.started,
             "payload": json.dumps(_request_json(p.request), indent=2, ensure_ascii=False),
             "cli": command("approve", positional=(p.run_id, p.key), prefix=ledger.prefix)}
            for p in pending]


def _workers(ledger: Ledger) -> list[dict[str, Any]]:
    workers = RunQueue(ledger, RunQueue.stored_shards(ledger)).workers()
    return [{f: getattr(w, f) for f in w.__slots__} for w in workers]
