"""One thread per ledger renews the leases of all the runs this process holds.

A thread per run cost its start (tens of µs) on every run opened and a wake-up per run; one
renewer sends every renewal of a tick in one pipeline. It stops when no run is open.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from redis.exceptions import NoScriptError

from ._errors import LedgerError

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._session import RunSession

__all__ = ["LeaseRenewer"]

log = logging.getLogger("agentledger")


class LeaseRenewer:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._sessions: dict[int, RunSession] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, session: RunSession) -> None:
        with self._lock:
            self._sessions[id(session)] = session
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="agentledger-leases")
                self._thread.start()

    def remove(self, session: RunSession) -> None:
        with self._lock:
            self._sessions.pop(id(session), None)

    def _loop(self) -> None:
        interval = self._ledger.lease_ms / 3000
        while True:
            self._wake.wait(interval)
            with self._lock:
                sessions = list(self._sessions.values())
                if not sessions:
                    self._thread = None
                    return
            try:
                replies = self._renew(sessions)
            except LedgerError as e:
                log.warning("agentledger: could not renew leases: %s", e)
                continue
            except Exception:  # the renewer must outlive any surprise, or every lease lapses
                log.exception("agentledger: lease renewal failed")
                continue
            for session, ok in zip(sessions, replies, strict=True):
                if not ok:
                    session.fenced = True
                    self.remove(session)
                    log.error("agentledger: run %r was taken over by another process",
                              session.run_id)

    def _renew(self, sessions: list[RunSession]) -> list[object]:
        ledger = self._ledger
        lease = ledger.lease_ms
        if ledger.cluster:
            return [ledger.script("renew", [s.keys.run], [str(s.fence), lease]) for s in sessions]
        script = ledger._scripts["renew"]

        def attempt() -> list[object]:
            pipe = ledger.redis.pipeline(transaction=False)  # an executed pipeline is empty
            for s in sessions:
                pipe.evalsha(script.sha, 1, s.keys.run, str(s.fence), lease)
            return list(pipe.execute())

        with ledger.redis_errors():
            try:
                return attempt()
            except NoScriptError:  # a restarted Redis forgot it
                ledger.redis.script_load(script.script)
                return attempt()
