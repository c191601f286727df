"""A crash child: runs one scenario as a durable run and prints its outcome as JSON.

    python oa_child.py <scenario> <run_id> <redis_url> <prefix> [run|stream|sync|resume]

Crashes come from AGENTLEDGER_CRASH_AT (a named step boundary) or AL_KILL_IN_TOOL.
AL_DURABILITY=sync|async|exit is passed to DurableRunner.run/resume (``durability=``);
``run_streamed`` always records at 'sync'.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from oa_world import agent_for

from agentledger import ApprovalPending, Ledger
from agentledger.openai_agents import DurableRunner


async def main(scenario: str, run_id: str, url: str, prefix: str, mode: str) -> dict[str, object]:
    ledger = Ledger.from_url(url, prefix=prefix, lease_ms=3000)
    agent = agent_for("seq" if scenario == "stream" else scenario)
    try:
        if mode == "stream":
            streamed = DurableRunner.run_streamed(agent, "go", run_id=run_id, ledger=ledger)
            kinds = [e.name for e in [ev async for ev in streamed.stream_events()]
                     if e.type == "run_item_stream_event"]
            return {"final": streamed.final_output, "events": kinds,
                    "interruptions": len(streamed.interruptions)}
        extra: dict[str, object] = {}
        if os.environ.get("AL_DURABILITY"):
            extra["durability"] = os.environ["AL_DURABILITY"]
        if os.environ.get("AL_SESSION_DB"):
            from agents import SQLiteSession

            extra["session"] = SQLiteSession("conversation", os.environ["AL_SESSION_DB"])
        if mode == "resume":
            result = await DurableRunner.resume(run_id, agent, ledger=ledger, **extra)
        else:
            result = await DurableRunner.run(agent, "go", run_id=run_id, ledger=ledger, **extra)
        out: dict[str, object] = {"final": result.final_output,
                                  "interruptions": len(result.interruptions)}
        if "session" in extra:
            items = await extra["session"].get_items()  # type: ignore[attr-defined]
            out["session"] = [i.get("type", i.get("role")) for i in items]
        return out
    except ApprovalPending as e:
        return {"pending": str(e)}
    finally:
        await ledger.aclose()
        ledger.close()


if __name__ == "__main__":
    scenario, run_id, url, prefix = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else "run"
    if mode == "sync":
        ledger = Ledger.from_url(url, prefix=prefix, lease_ms=3000)
        res = DurableRunner.run_sync(agent_for(scenario), "go", run_id=run_id, ledger=ledger)
        out: dict[str, object] = {"final": res.final_output,
                                  "interruptions": len(res.interruptions)}
    else:
        out = asyncio.run(main(scenario, run_id, url, prefix, mode))
    print("RESULT " + json.dumps(out))
