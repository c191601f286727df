"""``agentledger serve``: the console under uvicorn on a socket bound here (so a port in use is
a one-line error, and port 0 picks a free one)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from typing import TextIO

import uvicorn

from .._errors import LedgerError
from .._ledger import Ledger
from ._app import app
from ._security import new_token

__all__ = ["TOKEN_ENV", "bind", "serve"]

TOKEN_ENV = "AGENTLEDGER_CONSOLE_TOKEN"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        why = "the port is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise LedgerError(f"cannot serve on {host}:{port}: {why} (choose another with --port)"
                          ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(ledger: Ledger, out: TextIO, *, host: str = "127.0.0.1", port: int = 8765,
          allow_hosts: Sequence[str] = (), token: str | None = None,
          read_only: bool = False) -> None:
    """Serve the console until Ctrl-C. Without ``token`` (or ``AGENTLEDGER_CONSOLE_TOKEN``) a
    fresh one is made and printed once."""
    given = token or os.environ.get(TOKEN_ENV)
    token = given or new_token()
    sock = bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    console = app(ledger, token=token, read_only=read_only, hosts=[host, *allow_hosts])
    print(f"agentledger: console at {url}{' (read-only)' if read_only else ''} (Ctrl-C stops)",
          file=out, flush=True)
    if given:
        print("agentledger: sign in with the token given (--token / "
              f"{TOKEN_ENV})", file=out, flush=True)
    else:
        print(f"agentledger: open {url}login?token={token}  (token made for this run; give "
              f"--token or {TOKEN_ENV} to keep one)", file=out, flush=True)
    config = uvicorn.Config(console, log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
