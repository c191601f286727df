"""The operator console (agentledger.web) over real HTTP on loopback and in a real headless
Chromium: runs list, a crashed-and-resumed run's timeline, a step's detail, approve and reject
from the page, a wrong token refused, CSRF and Host checks, read-only mode, paging."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the console needs the [web] extra")
import uvicorn

import agentledger
from _console import TOKEN, Console, http
from _support import REPO, killed, run_child, tmpdir
from agentledger import ApprovalPending, Ledger
from agentledger._display import plain
from agentledger.web import app
from agentledger.web._query import RunFilter, page_runs
from agentledger.web._serve import bind

DOCS_SHOTS = REPO / "docs" / "console"


def shots_dir(tmp_path: Path) -> Path:
    """Where the browser test writes its screenshots: $AGENTLEDGER_ARTIFACTS/console if set, else
    the test's tmp dir. The committed docs/console/*.png are replaced only when
    AGENTLEDGER_UPDATE_SCREENSHOTS=1, so a test run leaves the tree clean."""
    base = os.environ.get("AGENTLEDGER_ARTIFACTS")
    shots = Path(base) / "console" if base else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def publish_shots(shots: Path) -> None:
    print(f"console screenshots: {shots}")
    if os.environ.get("AGENTLEDGER_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        for png in sorted(shots.glob("*.png")):
            shutil.copyfile(png, DOCS_SHOTS / png.name)
        print(f"console screenshots copied to {DOCS_SHOTS}")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@agentledger.step
def lookup(order: str) -> dict[str, Any]:
    return {"order": order, "note": "<b>" + "x" * 400 + "</b>", "lines": list(range(60))}


@agentledger.step
def ship(order: str) -> str:
    return f"shipped {order}"


def order_pipeline(order: str) -> None:
    lookup(order)
    with agentledger.scope("review"):
        decision = agentledger.approval("ship", {"order": order, "amount": 30})
    ship(order if decision.approved else "none")


def waiting_run(ledger: Ledger, run_id: str) -> None:
    with pytest.raises(ApprovalPending), ledger.run(run_id, kind="order"):
        order_pipeline(run_id)


def test_api_needs_the_token_and_answers_runs_steps_approvals(ledger: Ledger) -> None:
    with ledger.run("order-1", kind="order"):
        lookup("1")
    waiting_run(ledger, "refund <7>")
    with Console(ledger) as c:
        assert http(c.url + "/api/runs", token=None)[0] == 401
        assert http(c.url + "/api/runs", token="wrong")[0] == 401
        code, body = http(c.url + "/api/runs?status=completed")
        assert code == 200 and [r["run_id"] for r in json.loads(body)["runs"]] == ["order-1"]
        assert json.loads(http(c.url + "/api/counts")[1])["waiting"] == 1
        code, body = http(c.url + "/api/run?id=order-1")
        step = json.loads(body)["steps"][0]
        assert step["result"]["order"] == "1" and step["idempotency_key"] and step["fingerprint"]
        code, body = http(c.url + "/api/approvals")
        assert json.loads(body)[0]["payload"] == {"order": "refund <7>", "amount": 30}
        # The page escapes what runs recorded.
        code, page = http(c.url + "/run?id=refund%20%3C7%3E")
        assert code == 200 and "refund &lt;7&gt;" in page and "<b>x" not in page
        spec = json.loads(http(c.url + "/api/openapi.json", token=None)[1])
        assert "/api/runs" in spec["paths"] and "/api/decision" in spec["paths"]
        # Signing in goes back only to a page of the console, never to another site.
        for bad in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
            req = urllib.request.Request(
                c.url + "/login?" + urllib.parse.urlencode({"token": TOKEN, "next": bad}))
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.build_opener(_NoRedirect).open(req, timeout=10)
            assert e.value.headers["location"] == "/", bad
        # Host check: a rebound DNS name is refused before any ledger data.
        assert http(c.url + "/api/runs", headers={"Host": "evil.example"})[0] == 403
        # Decide through the API, with the bearer token, as `agentledger approve` does.
        body_json = json.dumps({"by": "ops", "approved": True, "note": "ok"}).encode()
        code, body = http(c.url + "/api/decision?run=refund%20%3C7%3E", data=body_json,
                          headers={"Content-Type": "application/json"})
        assert code == 200 and json.loads(body)["step"] == "review/approval:ship#1"
        code, body = http(c.url + "/api/decision?run=refund%20%3C7%3E", data=body_json,
                          headers={"Content-Type": "application/json"})
        assert code == 409 and "no step waiting" in body


def test_forms_need_csrf_and_read_only_decides_nothing(ledger: Ledger) -> None:
    waiting_run(ledger, "r1")
    form = b"run=r1&step=review%2Fapproval%3Aship%231&action=approve&by=eve&csrf=forged"
    with Console(ledger) as c:
        code, body = http(c.url + "/decide", data=form,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert code == 403 and "CSRF" in body
    with Console(ledger, read_only=True) as c:
        code, page = http(c.url + "/run?id=r1")
        assert code == 200 and "read-only" in page and "<form method=\"post\" action=\"/decide\"" not in page
        code, body = http(c.url + "/api/decision?run=r1", data=b'{"by": "eve"}',
                          headers={"Content-Type": "application/json"})
        assert code == 403 and "read-only" in body
    assert ledger.steps("r1")[-1].status == "waiting"


def test_pages_walk_every_run_once_with_filters(ledger: Ledger) -> None:
    for i in range(130):
        with ledger.run(f"run-{i:03d}", kind="even" if i % 2 == 0 else "odd"):
            pass
    seen: list[str] = []
    cursor = None
    while True:
        page = page_runs(ledger, RunFilter(), cursor, limit=50)
        seen += [r.run_id for r, _ in page.runs]
        cursor = page.cursor
        if cursor is None:
            break
    assert sorted(seen) == [f"run-{i:03d}" for i in range(130)] and len(seen) == 130
    odd = page_runs(ledger, RunFilter(kind="odd", search="-1"), None, limit=500)
    assert {r.run_id for r, _ in odd.runs} == {f"run-{i:03d}" for i in range(130)
                                               if i % 2 and "-1" in f"run-{i:03d}"}


# ---- the real browser ------------------------------------------------------------------------
def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium (.ci/run does this as root)")
    return sync_playwright


@pytest.fixture
def crashed_run(ledger: Ledger, redis_url: str) -> Iterator[str]:
    """A run whose process was SIGKILLed inside its third step, then resumed: two replayed
    steps, one in-doubt step run again, two executed after it."""
    d = tmpdir()
    try:
        args = (redis_url, ledger.prefix, "crashed-order", "sync", str(d / "effects"))
        env = {"STEP_SLEEP": "0.05", "KILL_IN_BODY": "3"}
        child = Path(__file__).parent / "children" / "pipeline_child.py"
        assert killed(run_child(child, *args, env=env))
        done = run_child(child, *args, env={"STEP_SLEEP": "0.05"})
        assert done.returncode == 0, done.stderr
        yield "crashed-order"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def worker_run(ledger: Ledger, redis_url: str, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A real `agentledger worker` process and a run of its App waiting for an approval."""
    from _workers import CHILDREN, Workers
    from worker_app import build

    from _support import OFFLINE_ENV

    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(CHILDREN), "AL_URL": redis_url,
           "AL_PREFIX": ledger.prefix, "AL_EFFECTS": str(tmp_path / "effects.jsonl"),
           "AL_LEASE_MS": "3000"}
    workers = Workers(env, tmp_path)
    try:
        workers.start()
        worker_app = build(ledger)
        rid = worker_app.submit("approve", {"amount": 30}, run_id="worker-order")
        deadline = time.monotonic() + 60
        while (r := ledger.get_run(rid)) is None or r.status != "waiting":
            assert time.monotonic() < deadline, workers.log()
            time.sleep(0.05)
        yield worker_app, rid
    finally:
        workers.stop_all()


def test_console_in_a_real_browser(ledger: Ledger, crashed_run: str,
                                   worker_run: tuple[Any, str], tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    waiting_run(ledger, "approve-me")
    waiting_run(ledger, "reject-me")
    waiting_run(ledger, "edit-me")
    shots = shots_dir(tmp_path)
    with Console(ledger) as c, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            # A wrong token is refused; nothing of the ledger is shown.
            page.goto(c.url + "/")
            page.fill("input[name=token]", "wrong")
            page.click("button:has-text('sign in')")
            expect(page.locator("#wrong-token")).to_be_visible()
            assert "crashed-order" not in page.content()
            assert context.request.get(c.url + "/api/runs").status == 401
            page.fill("input[name=token]", TOKEN)
            page.click("button:has-text('sign in')")
            # The runs list, with counts per status; a run made meanwhile appears by itself.
            expect(page.locator("#runs")).to_contain_text("crashed-order")
            expect(page.locator(".count.waiting b")).to_have_text("4")
            with ledger.run("arrived-later", kind="order"):
                lookup("9")
            expect(page.locator("#runs")).to_contain_text("arrived-later")
            page.screenshot(path=str(shots / "runs.png"))
            # The crashed-and-resumed run: replayed steps and the in-doubt re-run are told apart.
            page.click("text=crashed-order")
            expect(page.locator("#timeline g.bar")).to_have_count(5)
            expect(page.locator("#timeline g.bar.replayed")).to_have_count(2)
            third = page.locator("#timeline g.bar").nth(2)
            expect(third).to_contain_text("2 attempts")
            third.locator("rect").click()
            expect(page.locator("#detail-body")).to_contain_text("idempotency key")
            expect(page.locator("#detail-body")).to_contain_text("fingerprint")
            page.screenshot(path=str(shots / "run-timeline.png"), full_page=True)
            # A step of a waiting run: big values cut, with a way to see all.
            page.goto(c.url + "/run?id=approve-me")
            page.locator("#steps tr.step").first.click()
            more = page.locator("#detail-body button.more").first
            expect(more).to_be_visible()
            more.click()
            expect(page.locator("#detail-body")).to_contain_text("x" * 400)
            page.screenshot(path=str(shots / "step-detail.png"), full_page=True)
            # Approve from the page; the run is resumed (as a worker would) and the page
            # follows it to completed without a reload.
            page.fill(".pending input[name=by]", "ops-alice")
            page.fill(".pending input[name=note]", "looks right")
            page.click(".pending button.approve")
            expect(page.locator("#flash")).to_contain_text("approved")
            with ledger.run("approve-me", kind="order"):
                order_pipeline("approve-me")
            expect(page.locator("#run-status")).to_have_text("completed")
            # A run of a worker: approved from the page, the worker continues it by itself.
            worker_app, rid = worker_run
            page.goto(c.url + "/run?id=" + rid)
            page.fill(".pending input[name=by]", "ops-dan")
            page.click(".pending button.approve")
            expect(page.locator("#flash")).to_contain_text("approved")
            expect(page.locator("#run-status")).to_have_text("completed", timeout=60_000)
            assert worker_app.result(rid, timeout=10) == {"shipped": True, "by": "ops-dan"}
            page.screenshot(path=str(shots / "run-approved.png"), full_page=True)
            # Reject from the approvals page; a bad edited payload is caught in the page first.
            page.goto(c.url + "/approvals")
            card = page.locator(".pending", has_text="reject-me")
            card.locator("summary").click()
            card.locator("textarea").fill("{not json")
            card.locator("input[name=by]").fill("ops-bob")
            card.locator("button.approve-edited").click()
            expect(card.locator(".json-error")).to_contain_text("not JSON")
            page.screenshot(path=str(shots / "approvals.png"), full_page=True)
            card.locator("button.reject").click()
            expect(page.locator("#flash")).to_contain_text("rejected")
            # Approve with an edited payload: the run gets the edited value.
            page.goto(c.url + "/run?id=edit-me")
            page.click(".pending summary")
            page.fill(".pending textarea", '{"order": "edit-me", "amount": 25}')
            page.fill(".pending input[name=by]", "ops-carol")
            page.click(".pending button.approve-edited")
            expect(page.locator("#flash")).to_contain_text("approved")
        finally:
            browser.close()
    publish_shots(shots)
    decided = {s.name: s for s in ledger.steps("approve-me")}
    assert decided["ship"].status == "completed" and "approve-me" in decided["ship"].outcome_text()
    rejected = next(s for s in ledger.steps("reject-me") if s.kind == "approval")
    assert plain(json.loads(rejected.outcome or "{}")["value"])["approved"] is False
    assert "ops-bob" in (rejected.outcome or "")
    edited = next(s for s in ledger.steps("edit-me") if s.kind == "approval")
    decision = plain(json.loads(edited.outcome or "{}")["value"])
    assert decision["approved"] is True and decision["payload"] == {"order": "edit-me", "amount": 25}
    assert decision["by"] == "ops-carol"


def test_mounted_inside_another_app_links_follow_the_mount(ledger: Ledger) -> None:
    from fastapi import FastAPI

    waiting_run(ledger, "m1")
    outer = FastAPI()
    outer.mount("/ledger", app(ledger, token=TOKEN))
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(outer, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        code, body = http(url + "/ledger/api/runs")
        assert code == 200 and json.loads(body)["runs"][0]["run_id"] == "m1"
        req = urllib.request.Request(url + "/ledger/")
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(req, timeout=10)
        assert e.value.code == 303 and e.value.headers["location"].startswith("/ledger/login")
        code, page = http(url + "/ledger/run?id=m1")
        assert code == 200 and 'href="/ledger/static/console.css"' in page
        assert 'action="/ledger/decide"' in page
        assert http(url + "/ledger/static/console.js", token=None)[0] == 200
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _serve(redis_url: str, prefix: str, *args: str, env: dict[str, str] | None = None
           ) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentledger._cli", "serve", "--url", redis_url, "--prefix", prefix,
         "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AGENTLEDGER_CONSOLE_TOKEN": "", **(env or {})}, cwd=str(REPO))
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    return proc, lines


def test_serve_makes_a_token_or_takes_one_and_read_only(ledger: Ledger, redis_url: str) -> None:
    waiting_run(ledger, "s1")
    proc, lines = _serve(redis_url, ledger.prefix)
    try:
        url = re.search(r"(http://127\.0\.0\.1:\d+/)login\?token=(\S+)", lines[1])
        assert url, lines
        base, token = url.group(1), url.group(2)
        while http(base + "api/counts", token=token)[0] != 200:
            time.sleep(0.05)
        assert http(base + "api/counts", token=None)[0] == 401
        assert json.loads(http(base + "api/counts", token=token)[1])["waiting"] == 1
    finally:
        proc.terminate()
        proc.wait(10)
    proc, lines = _serve(redis_url, ledger.prefix, "--read-only",
                         env={"AGENTLEDGER_CONSOLE_TOKEN": TOKEN})
    try:
        assert "(read-only)" in lines[0] and TOKEN not in "".join(lines)
        base = re.search(r"http://127\.0\.0\.1:\d+/", lines[0]).group(0)  # type: ignore[union-attr]
        while http(base + "api/counts")[0] != 200:
            time.sleep(0.05)
        code, body = http(base + "api/decision?run=s1", data=b'{"by": "eve"}',
                          headers={"Content-Type": "application/json"})
        assert code == 403 and "read-only" in body
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_without_the_web_extra_says_how_to_install_it(redis_url: str) -> None:
    code = ("import sys; sys.modules['fastapi'] = None; from agentledger._cli import main; "
            f"sys.exit(main(['serve', '--url', {redis_url!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "agentledger: the console needs the [web] extra (fastapi is missing): "
        "pip install 'agentledger[web]'"]


def _get_with_host(base_url: str, path: str, host: str | None) -> tuple[int, str]:
    """GET with a chosen Host header, as a browser sends it after a DNS rebinding."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_only_bound_and_allowed_hosts_are_answered(ledger: Ledger) -> None:
    with ledger.run("secret-run"):
        pass
    with Console(ledger) as c:
        port = c.url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            code, page = _get_with_host(c.url, "/", host)
            assert code == 200 and "secret-run" in page, host
        for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io"):
            code, page = _get_with_host(c.url, "/api/runs", host)
            assert code == 403 and "secret-run" not in page and "--allow-host" in page, host
        # No Host at all: HTTP/1.1 requires one, and the server refuses the request (400).
        code, page = _get_with_host(c.url, "/api/runs", None)
        assert code in (400, 403) and "secret-run" not in page
    allowed = app(ledger, token=TOKEN, hosts=["127.0.0.1", "ledger.internal"])
    server = uvicorn.Server(uvicorn.Config(allowed, log_level="warning"))
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        assert _get_with_host(url, "/", "ledger.internal:80")[0] == 200
        assert _get_with_host(url, "/", "other.internal")[0] == 403
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_odd_run_ids_are_url_encoded_and_commands_shell_quoted(ledger: Ledger,
                                                              tmp_path: Path) -> None:
    import html
    import shlex

    odd = "a/b?c#d &x=<y>"
    with ledger.run(odd):
        lookup("1")
    marker = tmp_path / "pwned"
    crafted = f"x$(touch {marker})'; touch {marker}; '"
    with pytest.raises(ApprovalPending), ledger.run(crafted):
        agentledger.approval("refund", {"amount": 1})
    with Console(ledger, read_only=True) as c:
        code, page = http(c.url + "/")
        assert code == 200 and 'href="/run?id=a/b%3Fc%23d%20%26x%3D%3Cy%3E"' in page
        code, page = http(c.url + "/run?id=a/b%3Fc%23d%20%26x%3D%3Cy%3E")
        assert code == 200 and "a/b?c#d &amp;x=&lt;y&gt;" in page
        code, page = http(c.url + "/approvals")
        suggested = html.unescape(re.findall(r"<code>(agentledger approve [^<]*)</code>", page)[0])
    argv = shlex.split(suggested)
    assert argv[:2] == ["agentledger", "approve"] and crafted in argv
    # Pasted into a shell, it runs nothing else: the shell hands the run id over as is.
    echoed = subprocess.run(["sh", "-c", suggested.replace("agentledger", "printf '%s\\n'", 1)],
                            capture_output=True, text=True, timeout=10)
    assert crafted in echoed.stdout.splitlines() and not marker.exists()


def test_values_are_shown_as_written(ledger: Ledger) -> None:
    class Message:
        def __init__(self, content: str) -> None:
            self.content = content

    ledger.codec.register(Message, "langchain.AIMessage",
                          lambda m: {"type": "ai", "content": m.content, "tool_calls": []},
                          lambda d: Message(d["content"]))

    @agentledger.step
    def answer(question: str) -> Message:
        return Message(f"the answer to {question}")

    with ledger.run("chat-1"):
        answer("life")
    with Console(ledger) as c:
        code, body = http(c.url + "/api/run?id=chat-1")
    assert code == 200 and "$al" not in body
    assert json.loads(body)["steps"][0]["result"] == {"role": "ai", "text": "the answer to life"}


# ---- which process ran a step ----------------------------------------------------------------
_EXECUTOR_CHILD = """
import os, signal, sys
import agentledger
from agentledger import Ledger

ledger = Ledger.from_url(sys.argv[1], prefix=sys.argv[2], lease_ms=3000)

@agentledger.step
def fetch() -> str:
    return "fetched"

@agentledger.step
def charge() -> str:
    os.kill(os.getpid(), signal.SIGKILL)  # dies inside its second step
    return "never"

print(os.getpid(), flush=True)
with ledger.run("two-processes"):
    fetch()
    charge()
"""


@agentledger.step
def fetch() -> str:
    return "fetched"


@agentledger.step
def charge() -> str:
    return "charged"


def test_each_step_names_the_process_that_ran_it(ledger: Ledger, redis_url: str) -> None:
    """A SIGKILLed child ran step 1 and died in step 2; this process resumed and re-ran step 2:
    the record, `agentledger show --json`, the API and the detail panel's data name each
    step's own process. A record written before the field was kept still renders."""
    import io
    import socket

    from agentledger._cli import main

    child = run_child(_EXECUTOR_CHILD, redis_url, ledger.prefix)
    assert killed(child), child.stderr
    child_pid = int(child.stdout.split()[0])
    with ledger.run("two-processes"):
        fetch()
        charge()
    host = socket.gethostname()
    steps = {s.name: s for s in ledger.steps("two-processes")}
    assert steps["fetch"].executor.startswith(f"{host}:{child_pid}:")
    assert steps["charge"].executor.startswith(f"{host}:{os.getpid()}:")
    assert steps["charge"].attempts == 2
    out = io.StringIO()
    assert main(["--url", redis_url, "--prefix", ledger.prefix, "show", "two-processes",
                 "--json"], out=out) == 0
    shown = {s["name"]: s["executor"] for s in json.loads(out.getvalue())["steps"]}
    assert shown == {"fetch": steps["fetch"].executor, "charge": steps["charge"].executor}
    # A record from before the field: rewritten without it, it still renders ("not recorded").
    steps_key = ledger.keys("two-processes").steps
    raw = json.loads(ledger.redis.hget(steps_key, "m:" + steps["fetch"].key))
    del raw["executor"]
    ledger.redis.hset(steps_key, "m:" + steps["fetch"].key, json.dumps(raw))
    with Console(ledger) as c:
        code, body = http(c.url + "/api/run?id=two-processes")
        assert code == 200
        api = {s["name"]: s["executor"] for s in json.loads(body)["steps"]}
        assert api == {"fetch": None, "charge": steps["charge"].executor}
        key = urllib.parse.quote(steps["charge"].key)
        code, body = http(c.url + "/api/step?run=two-processes&key=" + key)
        assert code == 200 and json.loads(body)["executor"] == steps["charge"].executor
        # The attempt the child died in is listed, with the child as its process.
        [first] = json.loads(body)["earlier_attempts"]
        assert first["attempt"] == 1 and first["status"] == "in doubt (no outcome)"
        assert first["executor"].startswith(f"{host}:{child_pid}:") and first["error"] is None
        assert http(c.url + "/run?id=two-processes")[0] == 200
    assert ledger.steps("two-processes")[0].executor == ""


# ---- a retried step's earlier attempts and their errors --------------------------------------
@agentledger.step
def flaky_charge(order: str) -> str:
    tries = FLAKY.setdefault(order, 0) + 1
    FLAKY[order] = tries
    if tries < 3:
        raise RuntimeError(f"card declined on try {tries} " + "y" * 500)
    return f"charged {order}"


FLAKY: dict[str, int] = {}


def test_a_retried_step_lists_its_earlier_attempts_with_their_errors(ledger: Ledger) -> None:
    """A unit of work retried under restart_numbering (as a worker or LangGraph's RetryPolicy
    does): the step failed twice, then succeeded; its detail lists both earlier attempts, each
    with its own (cut) error."""
    for attempt in (1, 2, 3):
        try:
            with ledger.run("flaky", kind="order"), agentledger.restart_numbering(attempt):
                lookup("f")
                flaky_charge("f")
        except RuntimeError:
            assert attempt < 3
    keys = [s.key for s in ledger.steps("flaky")]
    last = next(k for k in keys if k.endswith(".r3"))
    with Console(ledger) as c:
        code, body = http(c.url + "/api/step?run=flaky&key=" + urllib.parse.quote(last))
        assert code == 200
        detail = json.loads(body)
        assert detail["result"] == "charged f"
        earlier = detail["earlier_attempts"]
        assert [e["attempt"] for e in earlier] == [1, 2]
        assert [e["status"] for e in earlier] == ["failed", "failed"]
        for n, e in enumerate(earlier, 1):
            assert e["error"]["type"].endswith("RuntimeError")
            assert e["error"]["message"].startswith(f"card declined on try {n} ")
            assert len(e["error"]["message"]) <= 301  # cut, with an ellipsis
            assert e["executor"].split(":")[1] == str(os.getpid())
        run = json.loads(http(c.url + "/api/run?id=flaky")[1])
        by_key = {s["key"]: s for s in run["steps"]}
        assert len(by_key[last]["earlier_attempts"]) == 2
        assert by_key[last.removesuffix(".r3")]["earlier_attempts"] == []


def test_in_place_attempts_kept_are_the_newest_five(ledger: Ledger) -> None:
    """A step claimed 8 times, each holder taken over before it recorded anything: the 8th
    attempt's record keeps attempts 3..7 (bounded), each with its fencing token."""
    from agentledger._session import StepCall

    sessions = []
    for _ in range(8):
        session = ledger.open_run("taken-over", on_busy="takeover")
        sessions.append(session)
        session.begin(StepCall(kind="step", name="charge", inputs={"order": "t"}))
    try:
        [step] = ledger.steps("taken-over")
        assert step.attempts == 8 and step.status == "running"
        assert [t.attempt for t in step.tried] == [3, 4, 5, 6, 7]
        assert [t.fence for t in step.tried] == [s.fence for s in sessions[2:7]]
        assert {t.executor.split(":")[1] for t in step.tried} == {str(os.getpid())}
    finally:
        for session in sessions:
            session.stop_renewing()
