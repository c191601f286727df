"""The console's guards: the token, the session cookie, CSRF tokens and the Host check.

- Token: every page and API call needs it, as ``Authorization: Bearer <token>`` or as the
  session cookie that ``/login`` sets (its value is derived from the token, not the token).
- CSRF: every form carries ``HMAC(secret, nonce)`` where the nonce is a cookie of its own; a
  page elsewhere can neither read the nonce nor compute the HMAC. POSTs also need a same-origin
  ``Origin`` when the browser sends one.
- Host: only the names the server is bound to (plus ``--allow-host``) are answered, so a page
  that points its own DNS name at 127.0.0.1 (DNS rebinding) gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable

__all__ = ["HostCheck", "Secrets", "new_token"]

SESSION_COOKIE = "agentledger_console"
NONCE_COOKIE = "agentledger_csrf"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def new_token() -> str:
    """A fresh console token (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


class Secrets:
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the console token must not be empty")
        self.token = token
        self._key = hashlib.sha256(b"agentledger-console:" + token.encode()).digest()

    def _mac(self, what: str) -> str:
        return hmac.new(self._key, what.encode(), hashlib.sha256).hexdigest()

    @property
    def session(self) -> str:
        """The session cookie's value: proves the token was given, without being it."""
        return self._mac("session")

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def session_ok(self, cookie: str | None) -> bool:
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())

    def csrf(self, nonce: str) -> str:
        return self._mac("csrf:" + nonce)

    def csrf_ok(self, nonce: str | None, given: str | None) -> bool:
        if not nonce or not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf(nonce).encode())


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


class HostCheck:
    """Which ``Host`` names a server bound to ``bound`` answers."""

    def __init__(self, bound: str, allow_hosts: Iterable[str] = ()) -> None:
        bound = bound.strip("[]")
        self.allowed = {bound.lower(), *(h.lower().strip("[]") for h in allow_hosts)}
        self.wildcard = bound in ("", "0.0.0.0", "::")
        if self.wildcard or _is_loopback(bound):
            self.allowed |= _LOOPBACK_NAMES | {"127.0.0.1", "::1"}
        if self.wildcard:
            self.allowed.add(socket.gethostname().lower())

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name = host_header.strip()
        if name.startswith("["):
            name = name[1:].split("]", 1)[0]
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        name = name.lower().rstrip(".")
        if name in self.allowed:
            return True
        # Bound to every interface, any IP literal names this machine; DNS rebinding needs a
        # name, and names are only those bound or given with --allow-host.
        return self.wildcard and _is_ip(name)
