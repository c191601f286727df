"""agentledger for CrewAI: ``DurableCrewHandler`` makes an existing crew's calls durable.

    from agentledger.crewai import DurableCrewHandler
    DurableCrewHandler(run_id="launch-7").attach(crew)
    crew.kickoff(inputs={...})
"""

from agentledger._optional import require, require_version

# 1.15.3-1.15.28 turn the adapter's HookAborted into an "Error executing tool" observation
# (approvals and the in-doubt 'fail' policy would be ignored); 1.15.0-1.15.2 lack the hooks.
CREWAI_MINIMUM = "1.15.29"

require("crewai", "crewai")
require_version(
    "crewai", CREWAI_MINIMUM, "crewai",
    "older versions carry on past a stopped tool call as if it had failed, so tool approvals "
    "and the in-doubt 'fail' policy would be ignored.")

from ._flow import LedgerFlowPersistence  # noqa: E402
from ._handler import DurableCrewHandler  # noqa: E402
from ._seams import CrewSeamError  # noqa: E402

__all__ = ["CREWAI_MINIMUM", "CrewSeamError", "DurableCrewHandler", "LedgerFlowPersistence"]
