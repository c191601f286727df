"""The read-only web page, over real HTTP on loopback."""

from __future__ import annotations

import html
import json
import re
import shlex
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentledger
from agentledger import ApprovalPending, Ledger
from agentledger._web import make_server


@pytest.fixture
def base_url(ledger: Ledger) -> Iterator[str]:
    server = make_server(ledger, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_pages_show_runs_steps_and_approvals(ledger: Ledger, base_url: str) -> None:
    @agentledger.step
    def lookup(order: str) -> str:
        return f"<b>{order}</b>"  # escaped on the page

    with ledger.run("order-1"):
        lookup("1")
    with pytest.raises(ApprovalPending), ledger.run("refund <7>"):
        agentledger.approval("refund", {"amount": 30})

    code, page = get(base_url + "/")
    assert code == 200 and "order-1" in page and "refund &lt;7&gt;" in page and "waiting" in page
    code, page = get(base_url + "/runs/order-1")
    assert code == 200 and "lookup" in page and "&lt;b&gt;1&lt;/b&gt;" in page and "<b>1</b>" not in page
    code, page = get(base_url + "/approvals")
    assert code == 200 and "approval:refund#1" in page and "30" in page
    code, data = get(base_url + "/api/runs?status=completed")
    assert [r["run_id"] for r in json.loads(data)] == ["order-1"]
    code, data = get(base_url + "/api/runs/order-1")
    assert json.loads(data)["steps"][0]["status"] == "completed"
    assert get(base_url + "/runs/nope")[0] == 404


def request(base_url: str, path: str, host: str | None) -> tuple[int, str]:
    """GET with a chosen Host header, as a browser sends it after a DNS rebinding."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_only_the_bound_host_is_answered(ledger: Ledger, base_url: str) -> None:
    with ledger.run("secret-run"):
        pass
    port = base_url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        code, page = request(base_url, "/", host)
        assert code == 200 and "secret-run" in page, host
    for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io", None):
        code, page = request(base_url, "/api/runs", host)
        assert code == 403 and "secret-run" not in page, host
        assert "--allow-host" in page


def test_allow_host_adds_a_name(ledger: Ledger) -> None:
    server = make_server(ledger, port=0, allow_hosts=["ledger.internal"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert request(base, "/", "ledger.internal:80")[0] == 200
        assert request(base, "/", "other.internal")[0] == 403
    finally:
        server.shutdown()
        server.server_close()


def test_links_are_url_encoded_and_commands_shell_quoted(ledger: Ledger, base_url: str,
                                                        tmp_path: Path) -> None:
    odd = "a/b?c#d"
    with ledger.run(odd):
        pass
    code, page = get(base_url + "/")
    assert code == 200 and "href='/runs/a%2Fb%3Fc%23d'" in page
    code, page = get(base_url + "/runs/a%2Fb%3Fc%23d")
    assert code == 200 and "run a/b?c#d" in page

    marker = tmp_path / "pwned"
    crafted = f"x$(touch {marker})'; touch {marker}; '"
    with pytest.raises(ApprovalPending) as raised, ledger.run(crafted):
        agentledger.approval("refund", {"amount": 1})
    code, page = get(base_url + "/approvals")
    suggested = html.unescape(re.findall(r"<code>(agentledger approve [^<]*)</code>", page)[0])
    in_error = re.findall(r"`([^`]*)`", str(raised.value))[0]
    for command in (suggested, in_error):
        argv = shlex.split(command)
        assert argv[:2] == ["agentledger", "approve"] and crafted in argv, command
        # Pasted into a shell, it runs nothing else: the shell hands the run id over as is.
        echoed = subprocess.run(["sh", "-c", command.replace("agentledger", "printf '%s\\n'", 1)],
                                capture_output=True, text=True, timeout=10)
        assert crafted in echoed.stdout.splitlines() and not marker.exists()


def test_values_are_shown_as_written_and_waiting_is_not_executed(ledger: Ledger,
                                                                 base_url: str) -> None:
    ledger.codec.register(Message, "langchain.AIMessage",
                          lambda m: {"type": "ai", "content": m.content, "tool_calls": []},
                          lambda d: Message(d["content"]))

    @agentledger.step
    def answer(question: str) -> Message:
        return Message(f"the answer to {question}")

    with pytest.raises(ApprovalPending), ledger.run("chat-1"):
        answer("life")
        agentledger.approval("send", {"to": "ann"})
    code, page = get(base_url + "/runs/chat-1")
    assert code == 200 and "$al" not in page
    assert "&quot;role&quot;: &quot;ai&quot;" in page and "the answer to life" in page
    assert "waiting for a person" in page
    code, page = get(base_url + "/approvals")
    assert "approve --payload" in page and "--reject" in page


class Message:
    """A stand-in registered under LangChain's tag, as the LangGraph adapter registers it."""

    def __init__(self, content: str) -> None:
        self.content = content
