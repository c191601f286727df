"""agentledger for CrewAI: ``DurableCrewHandler`` makes an existing crew's calls durable.

    from agentledger.crewai import DurableCrewHandler
    DurableCrewHandler(run_id="launch-7").attach(crew)
    crew.kickoff(inputs={...})
"""

from agentledger._optional import require

require("crewai", "crewai")

from ._flow import LedgerFlowPersistence  # noqa: E402
from ._handler import DurableCrewHandler  # noqa: E402

__all__ = ["DurableCrewHandler", "LedgerFlowPersistence"]
