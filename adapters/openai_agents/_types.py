"""The Agents SDK types that go into step records, on the ledger codec's allow-list.

Model output items are stored as ``model_dump(exclude_unset=True)`` and rebuilt with the
Responses union's validator: the rebuilt item dumps to the same fields, so a replayed response
is byte-identical as input to the next turn (a full dump would add defaults the model never
sent and change the next request).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, cast

from agents.exceptions import AgentsException, ModelBehaviorError, UserError
from agents.items import ModelResponse
from agents.tool import ToolOutputFileContent, ToolOutputImage, ToolOutputText
from agents.usage import deserialize_usage, serialize_usage
from openai._models import construct_type
from openai.types.responses import Response
from openai.types.responses.response_output_item import ResponseOutputItem
from pydantic import BaseModel, TypeAdapter

from agentledger import Codec

__all__ = ["ToolOutcome", "dump_item", "prepare_codec"]

_OUTPUT_ITEM: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)
_PREPARED = "openai-agents:ModelResponse"


@dataclass(slots=True)
class ToolOutcome:
    """What a function tool call produced: its output, and whether that output is an error
    text the SDK made (it skips the tool's output schema for those)."""

    output: Any
    sdk_error: bool = False


def dump_item(item: Any) -> Any:
    """An output/input item as the JSON the SDK would send: only the fields that were set."""
    if isinstance(item, BaseModel):
        return item.model_dump(mode="json", exclude_unset=True)
    return item


def _item_types() -> frozenset[str]:
    """The ``type`` values of the output item union."""
    union = typing.get_args(ResponseOutputItem)[0]
    found: set[str] = set()
    for member in typing.get_args(union):
        found.update(typing.get_args(member.model_fields["type"].annotation))
    return frozenset(found)


_ITEM_TYPES = _item_types()


def _load_item(data: Any) -> Any:
    if isinstance(data, dict) and data.get("type") in _ITEM_TYPES:
        try:
            return _OUTPUT_ITEM.validate_python(data)
        except ValueError:
            # The openai client builds what a server sends without validating it (a field
            # missing, a value of a newer kind), and the SDK takes it: rebuild it the same way.
            return construct_type(type_=ResponseOutputItem, value=data)
    return data  # an item type this openai version does not know: keep its JSON


def _load_response(data: dict[str, Any]) -> Response:
    try:
        return Response.model_validate(data)
    except ValueError:
        return cast(Response, construct_type(type_=Response, value=data))  # as _load_item


def _encode_response(r: ModelResponse) -> dict[str, Any]:
    return {"output": [dump_item(i) for i in r.output], "usage": serialize_usage(r.usage),
            "response_id": r.response_id, "request_id": r.request_id, "raw_usage": r.raw_usage}


def _decode_response(d: dict[str, Any]) -> ModelResponse:
    return ModelResponse(output=[_load_item(i) for i in d["output"]],
                         usage=deserialize_usage(d.get("usage") or {}),
                         response_id=d.get("response_id"), request_id=d.get("request_id"),
                         raw_usage=d.get("raw_usage"))


def _register_codex(codec: Codec) -> None:
    """The result of the SDK's Codex tool (an experimental extension) and its usage."""
    try:
        from agents.extensions.experimental.codex.codex_tool import CodexToolResult
        from agents.extensions.experimental.codex.events import Usage as CodexUsage
    except ImportError:  # an SDK without the extension
        return
    codec.register_dataclass(CodexUsage, "openai-agents:codex.Usage")
    codec.register_dataclass(CodexToolResult, "openai-agents:CodexToolResult")


def prepare_codec(codec: Codec) -> Codec:
    """Allow the SDK types a DurableRunner records (idempotent)."""
    if codec.knows(ModelResponse):
        return codec
    codec.register(ModelResponse, _PREPARED, _encode_response, _decode_response)
    codec.register(Response, "openai:Response",
                   lambda r: r.model_dump(mode="json", exclude_unset=True), _load_response)
    codec.register(ToolOutcome, "openai-agents:ToolOutcome",
                   lambda t: {"output": t.output, "sdk_error": t.sdk_error},
                   lambda d: ToolOutcome(d["output"], bool(d["sdk_error"])))
    for cls in (ToolOutputText, ToolOutputImage, ToolOutputFileContent):
        codec.register_pydantic(cls, f"openai-agents:{cls.__name__}")
    _register_codex(codec)
    # The SDK's own errors a step can end with are raised again as themselves on replay.
    for error in (AgentsException, UserError, ModelBehaviorError):
        codec.register_error(error)
    return codec
