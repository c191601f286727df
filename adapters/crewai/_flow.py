"""``LedgerFlowPersistence``: CrewAI Flow state and pending human feedback in the ledger's
Redis, next to the runs of the crews the flow kicks off.

    persistence = LedgerFlowPersistence(ledger=ledger)

    @persist(persistence)
    class LaunchFlow(Flow[LaunchState]):
        @start()
        def write(self):
            crew = build_crew()
            DurableCrewHandler.for_flow(self, "write", ledger=ledger).attach(crew)
            return crew.kickoff()

Records are JSON (``model_dump(mode="json")`` for pydantic states), under keys that carry the
flow id's hash tag and are tracked with the run of that id, so they expire and are deleted
with it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from agentledger import CorruptRecordError, Ledger, LedgerUnavailableError
from crewai.flow.async_feedback.types import PendingFeedbackContext
from crewai.flow.persistence.base import FlowPersistence

__all__ = ["LedgerFlowPersistence"]

_STATE = "flow_state"
_FEEDBACK = "flow_feedback"
_SCHEMA = 1


@contextmanager
def _reaching_redis() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise LedgerUnavailableError(f"Redis unreachable: {e}") from e


def _state_dict(state: dict[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(state, BaseModel):
        data: dict[str, Any] = state.model_dump(mode="json")
        return data
    if isinstance(state, dict):
        # Through JSON, so that anything without a JSON form is refused now, not on load.
        return dict(json.loads(json.dumps(state)))
    raise TypeError(f"flow state must be a dict or a pydantic model, not {type(state).__name__}")


class LedgerFlowPersistence(FlowPersistence):
    """A ``FlowPersistence`` on an agentledger :class:`~agentledger.Ledger`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    persistence_type: str = Field(default="agentledger")
    ledger: Ledger = Field(exclude=True)

    def init_db(self) -> None:
        with _reaching_redis():
            self.ledger.redis.ping()

    def _key(self, flow_uuid: str, name: str) -> str:
        return str(self.ledger.keys(flow_uuid).extra(name))

    def _write(self, flow_uuid: str, name: str, body: dict[str, Any]) -> None:
        key = self._key(flow_uuid, name)
        text = json.dumps({"v": _SCHEMA, **body}, separators=(",", ":"), ensure_ascii=False)
        with _reaching_redis():
            pipe = self.ledger.redis.pipeline(transaction=False)
            pipe.set(key, text)
            pipe.sadd(self.ledger.keys(flow_uuid).keyset, key)
            pipe.execute()

    def _read(self, flow_uuid: str, name: str) -> dict[str, Any] | None:
        key = self._key(flow_uuid, name)
        with _reaching_redis():
            raw = self.ledger.redis.get(key)
        if raw is None:
            return None
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise CorruptRecordError(key, f"not JSON ({e})") from None
        if not isinstance(body, dict) or body.get("v") != _SCHEMA:
            raise CorruptRecordError(key, f"unknown flow record version {body.get('v')!r}"
                                     if isinstance(body, dict) else "not an object")
        return body

    def save_state(self, flow_uuid: str, method_name: str,
                   state_data: dict[str, Any] | BaseModel) -> None:
        self._write(flow_uuid, _STATE, {"method": method_name, "at": int(time.time() * 1000),
                                        "state": _state_dict(state_data)})

    def load_state(self, flow_uuid: str) -> dict[str, Any] | None:
        body = self._read(flow_uuid, _STATE)
        return None if body is None else dict(body["state"])

    def save_pending_feedback(self, flow_uuid: str, context: PendingFeedbackContext,
                              state_data: dict[str, Any] | BaseModel) -> None:
        state = _state_dict(state_data)
        self.save_state(flow_uuid, context.method_name, state)
        self._write(flow_uuid, _FEEDBACK, {"context": json.loads(json.dumps(context.to_dict())),
                                           "state": state})

    def load_pending_feedback(self, flow_uuid: str
                              ) -> tuple[dict[str, Any], PendingFeedbackContext] | None:
        body = self._read(flow_uuid, _FEEDBACK)
        if body is None:
            return None
        return dict(body["state"]), PendingFeedbackContext.from_dict(body["context"])

    def clear_pending_feedback(self, flow_uuid: str) -> None:
        with _reaching_redis():
            self.ledger.redis.delete(self._key(flow_uuid, _FEEDBACK))
