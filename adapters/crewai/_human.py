"""``Task(human_input=True)`` as durable approvals.

CrewAI asks its human-input provider (a context variable) for feedback on a task's answer;
the default one blocks on ``input()``. This provider asks the ledger instead: the first time,
the request is recorded and the run stops with ``ApprovalPending`` (the process may exit);
``agentledger approve RUN STEP --note "..."`` records the person's feedback; the next kickoff
with the same run id replays everything up to here and gets the feedback back. An approval
with no note accepts the answer; a note (approved or rejected) is feedback the agent works
into a new answer, which is then put to the person again.
"""

from __future__ import annotations

from typing import Any

import agentledger
from agentledger import Decision, LedgerError
from crewai.core.providers.human_input import SyncHumanInputProvider

from ._abort import LedgerAbort

__all__ = ["LedgerHumanInput", "feedback_text"]

REJECTED_WITHOUT_NOTE = "The reviewer rejected this answer. Rework it."


def feedback_text(decision: Decision) -> str:
    """The feedback CrewAI's loop reads: empty accepts the answer."""
    if decision.approved:
        return decision.note or ""
    return decision.note or REJECTED_WITHOUT_NOTE


def _answer_text(answer: Any) -> str:
    output = getattr(answer, "output", answer)
    if isinstance(output, str):
        return output
    dump = getattr(output, "model_dump_json", None)
    return dump() if callable(dump) else str(output)


class LedgerHumanInput(SyncHumanInputProvider):
    """Human feedback through the ledger's approvals (falls back to the terminal outside a
    run)."""

    def _ask(self, answer: Any, context: Any) -> str | None:
        session = agentledger.current_run()
        if session is None:
            return None
        task = getattr(context, "task", None)
        payload = {"task": getattr(task, "description", None) or "",
                   "answer": _answer_text(answer)}
        try:
            return feedback_text(session.approval("human_input", payload))
        except LedgerError as e:
            raise LedgerAbort(e) from e

    async def _aask(self, answer: Any, context: Any) -> str | None:
        session = agentledger.current_run()
        if session is None:
            return None
        task = getattr(context, "task", None)
        payload = {"task": getattr(task, "description", None) or "",
                   "answer": _answer_text(answer)}
        try:
            return feedback_text(await session.aapproval("human_input", payload))
        except LedgerError as e:
            raise LedgerAbort(e) from e

    def handle_feedback(self, formatted_answer: Any, context: Any) -> Any:
        feedback = None if context._is_training_mode() else self._ask(formatted_answer, context)
        if feedback is None:
            return super().handle_feedback(formatted_answer, context)
        answer = formatted_answer
        while feedback.strip():
            context.messages.append(context._format_feedback_message(feedback))
            answer = context._invoke_loop()
            feedback = self._ask(answer, context) or ""
        context.ask_for_human_input = False
        return answer

    async def handle_feedback_async(self, formatted_answer: Any, context: Any) -> Any:
        feedback = (None if context._is_training_mode()
                    else await self._aask(formatted_answer, context))
        if feedback is None:
            return await super().handle_feedback_async(formatted_answer, context)
        answer = formatted_answer
        while feedback.strip():
            context.messages.append(context._format_feedback_message(feedback))
            answer = await context._ainvoke_loop()
            feedback = await self._aask(answer, context) or ""
        context.ask_for_human_input = False
        return answer
