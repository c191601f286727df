"""An App whose pipeline is the eleven-call graph of lg_pipeline.py, compiled with the
DurableCheckpointer: the graph records into the worker's run (thread_id = run id).

Run by ``python -m agentledger worker lg_worker_app:app``; env AL_URL, AL_PREFIX, LG_EFFECTS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lg_pipeline as pipeline

from agentledger import App, Ledger, RunSession
from agentledger.langgraph import DurableCheckpointer


def build(ledger: Ledger) -> App:
    app = App(ledger, max_retries=0)
    graph = pipeline.build(DurableCheckpointer(ledger))

    @app.pipeline("notify")
    def notify(input: None, run: RunSession) -> dict[str, Any]:
        config = {"configurable": {"thread_id": run.run_id}}
        return pipeline.plain_state(pipeline.run_to_end(graph, config, durability="sync"))

    return app


if os.environ.get("AL_URL"):
    app = build(Ledger.from_url(os.environ["AL_URL"], prefix=os.environ["AL_PREFIX"],
                                lease_ms=2000))
