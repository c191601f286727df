"""Record schemas (pydantic v2). Stored as versioned JSON; an unknown version is an error."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ._errors import CorruptRecordError, UnknownSchemaVersionError

__all__ = [
    "SCHEMA_VERSION",
    "Decision",
    "EarlierAttempt",
    "InDoubtPolicy",
    "RunRecord",
    "RunStatus",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "parse_outcome",
    "parse_step_meta",
]

SCHEMA_VERSION = 1
_M = TypeVar("_M", bound=BaseModel)


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"


class StepKind(StrEnum):
    TOOL = "tool"
    LLM = "llm"
    STEP = "step"
    APPROVAL = "approval"


class StepStatus(StrEnum):
    RUNNING = "running"  # an attempt started; with no live owner, the step is in doubt
    WAITING = "waiting"  # waits for a person (an approval, or an in-doubt step under 'ask')
    RETRY = "retry"  # a person allowed an in-doubt step to run again
    COMPLETED = "completed"
    FAILED = "failed"


class InDoubtPolicy(StrEnum):
    """What a restarted run does with a step that started and recorded no outcome."""

    RERUN = "rerun"  # run it again with the same idempotency key
    FAIL = "fail"  # fail the run with InDoubtStepError
    ASK = "ask"  # turn it into an approval: a person decides


class EarlierAttempt(BaseModel):
    """An attempt of a step that was run again in place (in doubt, or retried by a person):
    it recorded no outcome."""

    model_config = ConfigDict(extra="ignore")

    attempt: int
    executor: str = ""
    fence: int = 0
    started: int = 0


class StepMeta(BaseModel):
    """The part of a step record that the Lua scripts read and update (``m:<key>``)."""

    model_config = ConfigDict(extra="ignore")

    v: int
    key: str
    kind: StepKind
    name: str
    scope: str = ""
    seq: int = 0
    status: StepStatus
    attempts: int = 1
    fp: str = ""  # fingerprint of the call's inputs
    ik: str = ""  # idempotency key
    fence: int = 0
    policy: InDoubtPolicy = InDoubtPolicy.RERUN
    started: int = 0  # ms since the epoch, Redis server time
    ended: int = 0
    preview: str = ""  # a short text of the inputs, for people
    doubt: int = 0  # 1 when a waiting step is an in-doubt step put to a person
    # The run owner id ("host:pid:random") of the process that ran the latest attempt; ""
    # in records written before it was kept.
    executor: str = ""
    tried: list[EarlierAttempt] = []  # the newest 5 attempts this one replaced, oldest first


class StepRecord(StepMeta):
    """A step as read back: metadata plus its outcome (raw JSON, decoded on demand)."""

    outcome: str | None = None  # the ``r:<key>`` payload
    # ``c:<key>``: an outcome that arrived after the step was decided or taken over, from the
    # executor that had lost the run: {"v", "status", "fence", "at", "outcome"}.
    conflict: str | None = None
    request: str | None = None  # the ``a:<key>`` payload of an approval request
    replays: int = 0  # how many times a restarted run answered this step from its record

    @property
    def duration_ms(self) -> int | None:
        return self.ended - self.started if self.ended else None

    def outcome_text(self) -> str:
        """The outcome for people: the value as JSON, or ``ERROR type: message``."""
        return _outcome_text(self.outcome)

    def conflict_text(self) -> str:
        """The late outcome kept as a conflict, for people ('' if none)."""
        if not self.conflict:
            return ""
        try:
            data = json.loads(self.conflict)
            outcome = json.dumps(data["outcome"])
            return (f"{data['status']} by the executor fenced out (fence {data['fence']}) after "
                    f"the step was decided or taken over: {_outcome_text(outcome)}")
        except (ValueError, KeyError, TypeError):
            return "<unreadable conflict>"


def _outcome_text(outcome: str | None) -> str:
    if not outcome:
        return ""
    try:
        data = json.loads(outcome)
    except ValueError:
        return "<unreadable>"
    if not isinstance(data, dict):
        return "<unreadable>"
    if data.get("ok"):
        return json.dumps(data.get("value"), ensure_ascii=False)
    err = data.get("error") or {}
    return f"ERROR {err.get('type', '?')}: {err.get('message', '')}"


class Decision(BaseModel):
    """A person's decision on an approval step."""

    approved: bool
    by: str | None = None
    note: str | None = None
    payload: Any = None  # edited arguments or a resume value, where the framework allows
    at: int = 0  # ms since the epoch


class RunRecord(BaseModel):
    run_id: str
    status: RunStatus
    kind: str = ""
    created: int = 0
    updated: int = 0
    ended: int = 0
    owner: str = ""
    fence: int = 0
    lease_until: int = 0
    steps_total: int = 0
    steps_done: int = 0
    last_error: str = ""
    ttl_ms: int = -1

    @classmethod
    def from_hash(cls, key: str, h: dict[str, str], ttl_ms: int = -1) -> RunRecord:
        v = h.get("v")
        if v != str(SCHEMA_VERSION):
            if v is not None and v.isdigit():
                raise UnknownSchemaVersionError(key, v, SCHEMA_VERSION)
            raise CorruptRecordError(key, f"schema version field is {v!r}")
        try:
            return cls.model_validate({**h, "ttl_ms": ttl_ms})
        except ValidationError as e:
            raise CorruptRecordError(key, _short(e)) from None


def _short(e: ValidationError) -> str:
    first = e.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def parse_step_meta(key: str, raw: str | bytes) -> StepMeta:
    """Parse ``m:<step>`` read from ``key``; raise a clear error naming it if it is bad."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptRecordError(key, f"not JSON ({e})") from None
    return _validate_versioned(key, data, StepMeta)


def parse_outcome(key: str, raw: str | bytes) -> dict[str, Any]:
    """Parse the outcome envelope ``{"v": 1, "ok": bool, "value"|"error": ...}``."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptRecordError(key, f"outcome is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptRecordError(key, "outcome is not a JSON object")
    _check_version(key, data.get("v"))
    if not isinstance(data.get("ok"), bool) or ("value" not in data and "error" not in data):
        raise CorruptRecordError(key, "outcome lacks 'ok' and 'value'/'error'")
    return data


def _check_version(key: str, v: object) -> None:
    if v == SCHEMA_VERSION:
        return
    if isinstance(v, int) and not isinstance(v, bool) and v > SCHEMA_VERSION:
        raise UnknownSchemaVersionError(key, v, SCHEMA_VERSION)
    raise CorruptRecordError(key, f"schema version is {v!r}")


def _validate_versioned(key: str, data: object, model: type[_M]) -> _M:
    if not isinstance(data, dict):
        raise CorruptRecordError(key, "not a JSON object")
    _check_version(key, data.get("v"))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise CorruptRecordError(key, _short(e)) from None
