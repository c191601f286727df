"""A real uvicorn server of the operator console (agentledger.web) for tests, and a GET/POST
helper that carries the console token."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

import uvicorn

from agentledger import Ledger
from agentledger.web import app
from agentledger.web._serve import bind

TOKEN = "test-token-123"


class Console:
    """A real uvicorn server of the console on a free loopback port, in a thread."""

    def __init__(self, ledger: Ledger, **options: Any) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        asgi = app(ledger, token=TOKEN, hosts=["127.0.0.1"], **options)
        self.server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Console:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def http(url: str, *, token: str | None = TOKEN, data: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
