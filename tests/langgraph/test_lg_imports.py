"""The checkpointer alone does not import ``langchain`` (only ``DurableMiddleware`` needs it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_checkpointer_does_not_import_langchain(redis_url: str, prefix: str) -> None:
    out = _run(f"""
        import sys
        from typing import TypedDict
        from agentledger import Ledger
        from agentledger.langgraph import DurableCheckpointer
        from langgraph.graph import StateGraph, START, END

        class S(TypedDict):
            n: int

        saver = DurableCheckpointer(Ledger.from_url({redis_url!r}, prefix={prefix!r}))
        b = StateGraph(S)
        b.add_node("inc", lambda s: {{"n": s["n"] + 1}})
        b.add_edge(START, "inc")
        b.add_edge("inc", END)
        g = b.compile(checkpointer=saver)
        assert g.invoke({{"n": 1}}, {{"configurable": {{"thread_id": "t-imports"}}}}) == {{"n": 2}}
        print("langchain" in sys.modules)
        from agentledger.langgraph import DurableMiddleware
        print("langchain" in sys.modules, DurableMiddleware.__name__)
    """)
    assert out.splitlines() == ["False", "True DurableMiddleware"]
