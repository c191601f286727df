"""A review graph: a node drafts (a tool call with a side effect), asks a person through
``interrupt()``, then sends what the person decided. Used by the interrupt tests and run as a
child: ``python lg_review.py REDIS_URL PREFIX THREAD sync|async`` runs the thread to its end or
to its interrupt and prints the final state as JSON.

With $LG_KILL_AFTER_SEND set, the send tool SIGKILLs the process right after its side effect
(once: it leaves a marker file next to the effects file).
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.tools import tool
from langgraph.graph import START, StateGraph
from langgraph.types import interrupt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lg_pipeline as pipeline


@tool
def draft(topic: str) -> str:
    """Draft a message."""
    pipeline.effect("draft", topic)
    return f"draft about {topic}"


@tool
def send(to: str) -> str:
    """Send the message."""
    pipeline.effect("send", to)
    effects = os.environ.get("LG_EFFECTS", "")
    marker = Path(effects + ".killed")
    if os.environ.get("LG_KILL_AFTER_SEND") and not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return f"sent to {to}"


class ReviewState(TypedDict):
    log: Annotated[list[Any], operator.add]


def review(state: ReviewState) -> dict[str, Any]:
    text = draft.invoke({"topic": "launch"})
    answer = interrupt({"question": "send this?", "draft": text})
    to = answer.get("to", "nobody") if isinstance(answer, dict) else str(answer)
    if isinstance(answer, dict) and answer.get("approved") is False:
        return {"log": [text, answer, "not sent"]}
    return {"log": [text, answer, send.invoke({"to": to})]}


async def areview(state: ReviewState) -> dict[str, Any]:
    text = await draft.ainvoke({"topic": "launch"})
    answer = interrupt({"question": "send this?", "draft": text})
    to = answer.get("to", "nobody") if isinstance(answer, dict) else str(answer)
    if isinstance(answer, dict) and answer.get("approved") is False:
        return {"log": [text, answer, "not sent"]}
    return {"log": [text, answer, await send.ainvoke({"to": to})]}


def build(checkpointer: Any, *, use_async: bool = False) -> Any:
    g = StateGraph(ReviewState)
    g.add_node("review", areview if use_async else review)
    g.add_edge(START, "review")
    return g.compile(checkpointer=checkpointer)


def main() -> None:
    from agentledger import Ledger
    from agentledger.langgraph import DurableCheckpointer

    url, prefix, thread, mode = sys.argv[1:5]
    ledger = Ledger.from_url(url, prefix=prefix, lease_ms=2000)
    graph = build(DurableCheckpointer(ledger), use_async=mode == "async")
    config = {"configurable": {"thread_id": thread}}
    inputs = {"log": []}

    async def arun() -> Any:
        state = await graph.aget_state(config)
        return await graph.ainvoke(None if state.tasks else inputs, config)

    if mode == "async":
        out = asyncio.run(arun())
    else:
        state = graph.get_state(config)
        out = graph.invoke(None if state.tasks else inputs, config)
    print(json.dumps({"log": out.get("log", []), "interrupted": "__interrupt__" in out}))


if __name__ == "__main__":
    main()
