"""An App whose pipelines are plain ``DurableRunner`` calls with the worker's run id: the
runner records into the run the worker holds (no second lease) and leaves finishing it to the
worker. ``shop`` is async (``DurableRunner.run``), ``shop_sync`` sync (``run_sync``).

Run by ``python -m agentledger worker oa_worker_app:app``; env AL_URL, AL_PREFIX, AL_EFFECTS
(and AL_KILL_IN_TOOL, see oa_world.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from oa_world import agent_for

from agentledger import App, Ledger, RunSession
from agentledger.openai_agents import DurableRunner


def build(ledger: Ledger) -> App:
    app = App(ledger, max_retries=0)

    @app.pipeline("shop")
    async def shop(scenario: str, run: RunSession) -> str:
        result = await DurableRunner.run(agent_for(scenario), "go", run_id=run.run_id)
        return str(result.final_output)

    @app.pipeline("shop_sync")
    def shop_sync(scenario: str, run: RunSession) -> str:
        return str(DurableRunner.run_sync(agent_for(scenario), "go",
                                          run_id=run.run_id).final_output)

    return app


if os.environ.get("AL_URL"):
    app = build(Ledger.from_url(os.environ["AL_URL"], prefix=os.environ["AL_PREFIX"],
                                lease_ms=2000))
