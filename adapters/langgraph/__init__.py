"""agentledger for LangGraph: a durable checkpointer that also records every tool call and LLM
call made inside nodes.

    from agentledger.langgraph import DurableCheckpointer
    graph = builder.compile(checkpointer=DurableCheckpointer.from_url())
    graph.invoke(inputs, {"configurable": {"thread_id": "order-42"}})  # thread_id = run id

``DurableMiddleware`` (for ``langchain.agents.create_agent``) is imported on first use, so the
checkpointer alone does not import ``langchain``.
"""

from typing import TYPE_CHECKING, Any

from agentledger._optional import require

require("langgraph", "langgraph")

from ._checkpointer import DurableCheckpointer  # noqa: E402
from ._ckpt_serde import StrictSerializer  # noqa: E402
from ._progress import (  # noqa: E402
    ThreadProgress,
    ThreadStatus,
    athread_progress,
    thread_progress,
)

if TYPE_CHECKING:
    from ._middleware import DurableMiddleware

__all__ = ["DurableCheckpointer", "DurableMiddleware", "StrictSerializer", "ThreadProgress",
           "ThreadStatus", "athread_progress", "thread_progress"]


def __getattr__(name: str) -> Any:
    if name == "DurableMiddleware":
        require("langchain", "langgraph")
        from ._middleware import DurableMiddleware

        globals()[name] = DurableMiddleware
        return DurableMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
