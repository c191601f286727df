"""CrewAI values on the codec's allow-list: task outputs, with their pydantic results."""

from __future__ import annotations

import json
from typing import Any

from agentledger import Codec
from crewai.tasks.output_format import OutputFormat
from crewai.tasks.task_output import TaskOutput

__all__ = ["register_crewai_types"]

_TASK_OUTPUT_TAG = "crewai.TaskOutput"


def _plain(value: Any) -> Any:
    # Messages may hold provider objects; their JSON form is what a replay needs.
    return json.loads(json.dumps(value, default=lambda o: f"<{type(o).__name__}>"))


def _encode_task_output(out: TaskOutput) -> dict[str, Any]:
    # ``pydantic`` is left to the codec, so the user's model comes back with its type
    # (registered by the handler from the task's ``output_pydantic``).
    return {
        "description": out.description,
        "name": out.name,
        "expected_output": out.expected_output,
        "summary": out.summary,
        "raw": out.raw,
        "pydantic": out.pydantic,
        "json_dict": _plain(out.json_dict),
        "agent": out.agent,
        "output_format": out.output_format.value,
        "messages": _plain(list(out.messages)),
    }


def _decode_task_output(data: dict[str, Any]) -> TaskOutput:
    return TaskOutput(**{**data, "output_format": OutputFormat(data["output_format"])})


def register_crewai_types(codec: Codec) -> None:
    if not codec.knows(TaskOutput):
        codec.register(TaskOutput, _TASK_OUTPUT_TAG, _encode_task_output, _decode_task_output)
