"""The operator console: ``agentledger.web.app(ledger, token=...)`` is an ASGI app (FastAPI)
of runs, a run's timeline, step details and approvals, with a JSON API under ``/api/``.
Needs the ``[web]`` extra (``pip install 'agentledger[web]'``)."""

from __future__ import annotations

from ._app import app
from ._security import new_token

__all__ = ["app", "new_token"]
