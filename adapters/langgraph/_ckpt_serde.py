"""``StrictSerializer``: LangGraph's msgpack format, but only for an allow-list of types.

LangGraph's ``JsonPlusSerializer`` stores a non-JSON value as a msgpack extension naming the
module and attribute to call on load. By default it calls whatever a blob names (with a
warning), so anyone who can write one key of a thread could run code (``os.system``) in every
process that reads the thread; even with an allow-list it returns the raw data of a refused
type silently. This serializer checks every type a payload names before LangGraph builds
anything, and refuses the payload with an error naming the type; the same check runs when a
value is stored, so a type that could not be read back fails at the write, not at the resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import ormsgpack

from agentledger import UnsupportedTypeError
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

__all__ = ["LANGGRAPH_TYPES", "RefusedTypeError", "StrictSerializer"]

# What LangGraph's own state and LangChain's messages are made of (module, name).
LANGGRAPH_TYPES: frozenset[tuple[str, str]] = frozenset({
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("zoneinfo", "ZoneInfo"),
    ("uuid", "UUID"), ("decimal", "Decimal"),
    ("builtins", "set"), ("builtins", "frozenset"), ("collections", "deque"),
    ("ipaddress", "IPv4Address"), ("ipaddress", "IPv6Address"),
    ("ipaddress", "IPv4Network"), ("ipaddress", "IPv6Network"),
    ("ipaddress", "IPv4Interface"), ("ipaddress", "IPv6Interface"),
    ("pathlib", "Path"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib._local", "Path"), ("pathlib._local", "PosixPath"),
    *((f"langchain_core.messages.{m}", c + chunk)
      for m, c in (("base", "BaseMessage"), ("human", "HumanMessage"), ("ai", "AIMessage"),
                   ("system", "SystemMessage"), ("chat", "ChatMessage"),
                   ("tool", "ToolMessage"), ("function", "FunctionMessage"))
      for chunk in ("", "Chunk")),
    ("langchain_core.messages.modifier", "RemoveMessage"),
    ("langchain_core.documents.base", "Document"),
    ("langgraph.types", "Send"), ("langgraph.types", "Command"),
    ("langgraph.types", "Interrupt"), ("langgraph.types", "Overwrite"),
    ("langgraph.types", "PregelTask"), ("langgraph.types", "StateSnapshot"),
    ("langgraph.types", "TimeoutPolicy"),
})
# Methods a payload may name (module, class, method): LangGraph stores datetimes this way.
_METHODS: frozenset[tuple[str, str, str]] = frozenset({("datetime", "datetime", "fromisoformat")})

# LangGraph's extension codes (jsonplus): which ones name a (module, name) to build.
_NAMED = {getattr(jsonplus, n) for n in (
    "EXT_CONSTRUCTOR_SINGLE_ARG", "EXT_CONSTRUCTOR_POS_ARGS", "EXT_CONSTRUCTOR_KW_ARGS",
    "EXT_PYDANTIC_V1", "EXT_PYDANTIC_V2")}
_METHOD = jsonplus.EXT_METHOD_SINGLE_ARG
# Extensions that name nothing: a numpy array (dtype, shape, bytes) and a delta snapshot.
_INERT = {getattr(jsonplus, n) for n in ("EXT_NUMPY_ARRAY", "EXT_DELTA_SNAPSHOT")
          if hasattr(jsonplus, n)}
_PLAIN_TYPES = ("null", "bytes", "bytearray")
# The first bytes of msgpack's extension formats (fixext 1-16, ext 8/16/32). A payload holding
# none of them anywhere holds no extension, so it names no type: nothing to check.
_EXT_MARKERS = bytes([0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8])


def _may_name_types(data: bytes) -> bool:
    return len(data.translate(None, _EXT_MARKERS)) != len(data)


class RefusedTypeError(UnsupportedTypeError):
    """A payload names a type (or method) that is not in the serializer's allow-list."""

    def __init__(self, type_names: list[str]) -> None:
        names = list(dict.fromkeys(type_names))
        yours = ", ".join(n.rpartition(".")[2] for n in names if not n.startswith("<"))
        super().__init__(
            f"type {', '.join(names)} is not in DurableCheckpointer's allow-list"
            + (f"; if it is yours, register it: DurableCheckpointer(..., allowed_types=[{yours}])"
               if yours else ""))
        self.type_names = names


def type_key(entry: type | tuple[str, str]) -> tuple[str, str]:
    if isinstance(entry, type):
        return entry.__module__, entry.__name__  # what LangGraph's encoder writes
    if (isinstance(entry, tuple) and len(entry) == 2
            and all(isinstance(part, str) and part for part in entry)):
        return entry
    raise TypeError(f"allowed_types takes classes or (module, name) pairs, not {entry!r}")


class StrictSerializer(SerializerProtocol):
    """LangGraph's msgpack serializer, limited to :data:`LANGGRAPH_TYPES` plus ``allowed_types``
    (classes, or ``(module, name)`` pairs: your pydantic models, dataclasses, enums)."""

    def __init__(self, allowed_types: Iterable[type | tuple[str, str]] = ()) -> None:
        self.allowed: frozenset[tuple[str, str]] = LANGGRAPH_TYPES | {
            type_key(t) for t in allowed_types}
        self._inner = JsonPlusSerializer(allowed_msgpack_modules=sorted(self.allowed))

    def allowing(self, extra: Iterable[type | tuple[str, str]]) -> StrictSerializer:
        """A serializer that also loads ``extra``."""
        return StrictSerializer([*self.allowed, *extra])

    def _check(self, data: bytes) -> None:
        refused: list[str] = []
        try:
            ormsgpack.unpackb(data, ext_hook=self._hook(refused),
                              option=ormsgpack.OPT_NON_STR_KEYS)
        except Exception as e:
            raise ValueError(f"not a msgpack payload: {e}") from e
        if refused:
            raise RefusedTypeError(refused)

    def _hook(self, refused: list[str]) -> Callable[[int, bytes], Any]:
        # Reads the names only, builds nothing; every refused name is collected (outer first).
        def hook(code: int, data: bytes) -> None:
            if code not in _INERT and code not in _NAMED and code != _METHOD:
                refused.append(f"<msgpack extension {code}>")
                return None
            at = len(refused)
            parts = ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
            if code in _INERT:
                return None
            if not isinstance(parts, list) or len(parts) < (4 if code == _METHOD else 3):
                refused.insert(at, f"<malformed msgpack extension {code}>")
            elif code == _METHOD and (parts[0], parts[1], parts[3]) not in _METHODS:
                refused.insert(at, f"<method {parts[0]}.{parts[1]}.{parts[3]}>")
            elif code != _METHOD and (parts[0], parts[1]) not in self.allowed:
                refused.insert(at, f"{parts[0]}.{parts[1]}")
            return None

        return hook

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = self._inner.dumps_typed(obj)
        if type_ == "msgpack" and _may_name_types(data):
            self._check(data)
        return type_, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, payload = data
        if type_ == "msgpack":
            if _may_name_types(payload):
                self._check(payload)
        elif type_ not in _PLAIN_TYPES:
            raise RefusedTypeError([f"<serialization {type_!r}>"])
        return self._inner.loads_typed(data)
