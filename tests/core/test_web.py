"""The read-only web page, over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator

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
