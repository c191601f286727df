"""Where the step protocol reports to OpenTelemetry, when it is turned on.

The protocol checks ``active`` (one module global) at a few points: a run opened and finished,
a step begun, stopped in doubt and recorded, a decision taken; and around the body of a step
run by ``RunSession.call``/``acall``, whose span is current while it runs. It is
None unless ``agentledger.otel.instrument()`` set it, so with tracing off (or the ``[otel]``
extra absent) a step pays one global lookup per point and nothing else. This module imports
nothing of OpenTelemetry; ``agentledger.otel`` implements the hooks on top of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._records import StepMeta
    from ._session import RunSession, StepStart

__all__ = ["Hooks", "active"]


class Hooks(Protocol):
    """What the step protocol tells an instrumentation."""

    def run_opened(self, session: RunSession) -> None: ...

    def run_finished(self, session: RunSession, status: str, error: BaseException | None
                     ) -> None: ...

    def step_begun(self, session: RunSession, start: StepStart) -> None: ...

    def step_stopped(self, session: RunSession, start: StepStart, meta: StepMeta) -> None: ...

    def step_entered(self, start: StepStart) -> object:
        """The step's body starts in this frame (``RunSession.call``): its span is current."""
        ...

    def step_left(self, entered: object) -> None: ...

    def step_recorded(self, session: RunSession, start: StepStart, error: BaseException | None,
                      record_s: float) -> None: ...

    def decided(self, ledger: Ledger, run_id: str, step_key: str, approved: bool,
                by: str | None) -> None: ...


active: Hooks | None = None
