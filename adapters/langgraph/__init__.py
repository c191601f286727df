"""agentledger for LangGraph: a durable checkpointer that also records every tool call and LLM
call made inside nodes.

    from agentledger.langgraph import DurableCheckpointer
    graph = builder.compile(checkpointer=DurableCheckpointer.from_url())
    graph.invoke(inputs, {"configurable": {"thread_id": "order-42"}})  # thread_id = run id
"""

from agentledger._optional import require

require("langgraph", "langgraph")

from ._checkpointer import DurableCheckpointer  # noqa: E402
from ._middleware import DurableMiddleware  # noqa: E402

__all__ = ["DurableCheckpointer", "DurableMiddleware"]
