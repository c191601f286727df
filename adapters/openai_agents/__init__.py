"""agentledger for the OpenAI Agents SDK: ``DurableRunner``, a drop-in for ``Runner``.

    from agentledger.openai_agents import DurableRunner
    result = await DurableRunner.run(agent, "Refund order 42", run_id="refund-42")
"""

from agentledger._optional import require

require("agents", "openai-agents")

from ._runner import DurableRunner  # noqa: E402

__all__ = ["DurableRunner"]
