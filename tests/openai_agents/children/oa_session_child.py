"""Sessions with the SDK's extra rules, and a crash child that runs one turn of a tenant's
conversation in a context-aware session.

    python oa_session_child.py <run_id> <redis_url> <prefix> <sqlite db> <tenant>

``AL_KILL_IN_TOOL`` / ``AL_EFFECTS`` as in oa_world. Prints ``RESULT {"final", "session"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import Agent, RunContextWrapper, SQLiteSession
from oa_world import ScriptedModel, call, charge_card, reserve, say

from agentledger import Ledger
from agentledger.openai_agents import DurableRunner


class TenantSession:
    """A context-aware session (every method takes ``wrapper``): each tenant named in the
    run's context has a history of its own; without a wrapper, the ``default`` history."""

    session_settings = None

    def __init__(self, db: str) -> None:
        self.session_id = "tenants"
        self.db = db
        self._scopes: dict[str, SQLiteSession] = {}

    def scope(self, wrapper: RunContextWrapper[Any] | None) -> SQLiteSession:
        tenant = wrapper.context["tenant"] if wrapper is not None else "default"
        if tenant not in self._scopes:
            self._scopes[tenant] = SQLiteSession(f"tenant-{tenant}", self.db)
        return self._scopes[tenant]

    async def get_items(self, limit: int | None = None, *,
                        wrapper: RunContextWrapper[Any] | None = None) -> list[Any]:
        return await self.scope(wrapper).get_items(limit)

    async def add_items(self, items: list[Any], *,
                        wrapper: RunContextWrapper[Any] | None = None) -> None:
        await self.scope(wrapper).add_items(items)

    async def pop_item(self, *, wrapper: RunContextWrapper[Any] | None = None) -> Any:
        return await self.scope(wrapper).pop_item()

    async def clear_session(self, *, wrapper: RunContextWrapper[Any] | None = None) -> None:
        await self.scope(wrapper).clear_session()


def _turn(items: list[dict[str, Any]]) -> list[Any]:
    """Reserve, charge, answer: counting only the tool results after the last user message,
    so every turn of a conversation does the same."""
    last_user = max(i for i, item in enumerate(items) if item.get("role") == "user")
    seen = [str(i.get("output")) for i in items[last_user:]
            if i.get("type") == "function_call_output"]
    if not seen:
        return [call("reserve", item="book")]
    if len(seen) == 1:
        return [call("charge_card", order=42, amount=30)]
    return [say("done: " + "; ".join(seen))]


def turn_agent() -> Agent[Any]:
    return Agent(name="shop", instructions="sell", tools=[reserve, charge_card],
                 model=ScriptedModel("shop", _turn))


async def main(run_id: str, url: str, prefix: str, db: str, tenant: str) -> dict[str, Any]:
    ledger = Ledger.from_url(url, prefix=prefix, lease_ms=3000)
    session = TenantSession(db)
    try:
        result = await DurableRunner.run(turn_agent(), f"hello from {run_id}", run_id=run_id,
                                         ledger=ledger, session=session,
                                         context={"tenant": tenant})
        items = await session.scope(RunContextWrapper({"tenant": tenant})).get_items()
        return {"final": result.final_output,
                "session": [i.get("type", i.get("role")) for i in items]}
    finally:
        await ledger.aclose()
        ledger.close()


if __name__ == "__main__":
    print("RESULT " + json.dumps(asyncio.run(main(*sys.argv[1:6]))))
