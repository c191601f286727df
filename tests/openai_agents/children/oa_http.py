"""A fake OpenAI Responses endpoint on loopback: a real HTTP server that keeps every request
body and answers from it (a text that names how many input items it saw), plainly or as a
server-sent event stream. Used to drive a real ``OpenAIResponsesModel``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _response(body: dict[str, Any], n: int) -> dict[str, Any]:
    items = body.get("input")
    count = len(items) if isinstance(items, list) else 1
    return {
        "id": f"resp_{n}", "object": "response", "created_at": 0, "model": body.get("model"),
        "status": "completed", "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "output": [{"type": "message", "id": f"msg_{n}", "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "annotations": [],
                                 "text": f"seen {count} item(s)"}]}],
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
    }


class FakeResponses:
    """``requests``: the JSON body of every POST, in order. ``fail_next``: answer that many
    requests with a 500 first."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        self._lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    n = len(fake.requests)
                    fail = fake.fail_next > 0
                    fake.fail_next -= 1 if fail else 0
                if fail:
                    self._send(500, "application/json",
                               json.dumps({"error": {"message": "try again"}}).encode())
                    return
                response = _response(body, n)
                if not body.get("stream"):
                    self._send(200, "application/json", json.dumps(response).encode())
                    return
                events = [("response.created", {**response, "output": [], "status": "in_progress"}),
                          ("response.output_item.added", None), ("response.output_item.done", None),
                          ("response.completed", response)]
                chunks = []
                for seq, (kind, payload) in enumerate(events):
                    if payload is not None:
                        data: dict[str, Any] = {"type": kind, "sequence_number": seq,
                                                "response": payload}
                    else:
                        data = {"type": kind, "sequence_number": seq, "output_index": 0,
                                "item": response["output"][0]}
                    chunks.append(f"event: {kind}\ndata: {json.dumps(data)}\n\n")
                self._send(200, "text/event-stream", "".join(chunks).encode())

            def _send(self, status: int, kind: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@contextmanager
def fake_responses() -> Iterator[tuple[FakeResponses, str]]:
    """A running fake endpoint and its base URL (``http://127.0.0.1:<port>/v1``)."""
    fake = FakeResponses()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
