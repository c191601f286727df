"""Recorded values as people wrote them, for ``agentledger show`` and the console.

The codec stores types outside plain JSON as ``{"$al": TAG, "v": DATA}``; people should see a
LangChain message as its role and text, a tuple as a list, a date as a date, not the envelope.
Display only: nothing here is decoded into objects, so any record can be shown safely.
"""

from __future__ import annotations

import json
from typing import Any

from ._records import StepRecord

__all__ = ["how_text", "outcome_text", "plain", "preview_text"]

_TAG = "$al"


def _message(tag: str, data: Any) -> Any:
    if not isinstance(data, dict):
        return plain(data)
    role = data.get("type") or tag.removeprefix("langchain.").removesuffix("Message").lower()
    content = plain(data.get("content"))
    if isinstance(content, list):  # content blocks: keep their text
        content = " ".join(str(b.get("text", "")) if isinstance(b, dict) else str(b)
                           for b in content).strip()
    shown: dict[str, Any] = {"role": role, "text": content}
    calls = data.get("tool_calls") or []
    if isinstance(calls, list) and calls:
        shown["tool_calls"] = [{"name": c.get("name"), "args": plain(c.get("args"))}
                               for c in calls if isinstance(c, dict)]
    return shown


def plain(data: Any) -> Any:
    """Encoded data with every type tag replaced by a readable JSON form."""
    if isinstance(data, list):
        return [plain(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(_TAG)
    if not isinstance(tag, str):
        return {k: plain(v) for k, v in data.items()}
    inner = data.get("v")
    if tag == "dict" and isinstance(inner, list):
        return {json.dumps(plain(p[0]), ensure_ascii=False) if not isinstance(p[0], str) else p[0]:
                plain(p[1]) for p in inner if isinstance(p, list) and len(p) == 2}
    if tag == "bytes":
        return f"<{len(str(inner)) * 3 // 4} bytes>"
    if tag.startswith("langchain.") and tag.endswith("Message"):
        return _message(tag, inner)
    return plain(inner)  # tuples, sets, dates, decimals, models, dataclasses: their data


def outcome_text(step: StepRecord) -> str:
    """A step's outcome for people: the value as plain JSON, or ``ERROR type: message``."""
    if not step.outcome:
        return ""
    try:
        data = json.loads(step.outcome)
    except ValueError:
        return "<unreadable>"
    if not isinstance(data, dict):
        return "<unreadable>"
    if data.get("ok"):
        return json.dumps(plain(data.get("value")), ensure_ascii=False)
    err = data.get("error") or {}
    return f"ERROR {err.get('type', '?')}: {err.get('message', '')}"


def preview_text(step: StepRecord) -> str:
    """A step's input preview, untagged when it is whole JSON (a cut preview stays as is)."""
    try:
        return json.dumps(plain(json.loads(step.preview)), ensure_ascii=False)
    except ValueError:
        return step.preview


def how_text(step: StepRecord) -> str:
    """How the step came to its state: executed (×n), replayed, or waiting for a person."""
    if str(step.status) == "waiting":
        return "in doubt: waiting for a person" if step.doubt else "waiting for a person"
    if str(step.status) == "retry":
        return "to run again when the run restarts"
    if str(step.status) == "running":
        return "running" if step.attempts <= 1 else f"running (attempt {step.attempts})"
    how = "executed" if step.attempts <= 1 else f"executed ×{step.attempts}"
    if step.replays:
        how += f", replayed ×{step.replays}"
    return how
