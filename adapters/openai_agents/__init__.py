"""agentledger for the OpenAI Agents SDK: ``DurableRunner``, a drop-in for ``Runner``.

    from agentledger.openai_agents import DurableRunner
    result = await DurableRunner.run(agent, "Refund order 42", run_id="refund-42")
"""

from agentledger._optional import require

require("agents", "openai-agents")

import agentledger.otel  # noqa: E402

from ._runner import DurableRunner  # noqa: E402
from ._tracing import sdk_trace_attributes  # noqa: E402

# With agentledger.otel on, each span names the SDK's trace and span current where it begins.
agentledger.otel.add_attribute_source("openai_agents", sdk_trace_attributes)

__all__ = ["DurableRunner"]
