"""How checkpoints, channel blobs and writes are laid out as bytes in Redis.

Values go through LangGraph's serde (msgpack, never pickle; by default only the allow-listed
types of ``_ckpt_serde``); the envelopes around them are
plain msgpack data, read without any hook. A list channel (``messages`` with ``add_messages``)
is stored element by element, and a version whose list begins with the previous version's
list stores only what was appended, with a pointer to its base: storage grows with what was
said, not with its square.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ormsgpack

from agentledger import CorruptRecordError, UnknownSchemaVersionError
from langgraph.checkpoint.serde.base import SerializerProtocol

from ._ckpt_serde import RefusedTypeError

__all__ = [
    "EMPTY",
    "LIST",
    "RECORD_VERSION",
    "RS",
    "US",
    "check_name",
    "check_serde",
    "decode_blob",
    "decode_record",
    "decode_write",
    "dumps",
    "encode_blob",
    "encode_list",
    "encode_record",
    "encode_write",
    "loads",
]

US = "\x1f"  # separates the parts of a hash field or member
RS = "\x1e"  # separates the blob fields of one checkpoint
_USB = b"\x1f"
RECORD_VERSION = 1
EMPTY = "empty"  # a channel with a version and no value
LIST = "al.list"  # items appended to the base blob (or a whole list when there is no base)


def check_name(what: str, value: str) -> str:
    if US in value or RS in value:
        raise ValueError(f"{what} {value!r} contains a control byte (0x1e/0x1f) that "
                         "DurableCheckpointer uses as a separator")
    return value


def check_serde(serde: SerializerProtocol) -> SerializerProtocol:
    """Refuse a serde (or a wrapped one, like EncryptedSerializer's) that may pickle."""
    inner: Any = serde
    for _ in range(4):
        if getattr(inner, "pickle_fallback", False):
            raise ValueError("DurableCheckpointer never stores pickle: pass a serde with "
                             "pickle_fallback=False")
        inner = getattr(inner, "serde", None)
        if inner is None:
            break
    return serde


def _is_pickle(type_: str) -> bool:
    return type_.startswith("pickle") and type_.split("+", 1)[0] == "pickle"


def dumps(serde: SerializerProtocol, value: Any) -> tuple[str, bytes]:
    type_, data = serde.dumps_typed(value)
    if _is_pickle(type_):
        raise TypeError(f"{type(value).__name__} could only be stored as pickle, which "
                        "DurableCheckpointer refuses; make it msgpack-serialisable")
    return type_, data


def loads(serde: SerializerProtocol, type_: str, data: bytes, key: str, field: str) -> Any:
    if _is_pickle(type_):
        raise CorruptRecordError(key, f"field {field!r} holds pickle, which is never loaded")
    try:
        return serde.loads_typed((type_, data))
    except RefusedTypeError as e:
        raise CorruptRecordError(key, f"field {field!r} refused: {e}") from None
    except Exception as e:
        raise CorruptRecordError(key, f"field {field!r} does not decode as {type_!r}: "
                                 f"{type(e).__name__}: {e}") from e


def _unpack(raw: bytes, key: str, field: str) -> Any:
    try:
        return ormsgpack.unpackb(raw)
    except Exception as e:
        raise CorruptRecordError(key, f"field {field!r} is not a msgpack envelope: {e}") from e


# ---- checkpoint records ------------------------------------------------------------------
def encode_record(checkpoint: tuple[str, bytes], metadata: tuple[str, bytes],
                  parent_id: str | None) -> bytes:
    return ormsgpack.packb([RECORD_VERSION, checkpoint[0], checkpoint[1], metadata[0],
                            metadata[1], parent_id])


def decode_record(raw: bytes, key: str, field: str
                  ) -> tuple[tuple[str, bytes], tuple[str, bytes], str | None]:
    rec = _unpack(raw, key, field)
    if not isinstance(rec, list) or not rec:
        raise CorruptRecordError(key, f"field {field!r} is not a checkpoint record")
    if rec[0] != RECORD_VERSION:
        raise UnknownSchemaVersionError(f"{key} field {field!r}", rec[0], RECORD_VERSION)
    try:
        _, ct, cb, mt, mb, parent = rec
        if not (isinstance(ct, str) and isinstance(cb, bytes) and isinstance(mt, str)
                and isinstance(mb, bytes) and (parent is None or isinstance(parent, str))):
            raise TypeError("wrong field types")
    except (TypeError, ValueError) as e:
        raise CorruptRecordError(key, f"field {field!r} is a malformed record: {e}") from e
    return (ct, cb), (mt, mb), parent


# ---- channel blobs -----------------------------------------------------------------------
def encode_blob(type_: str, data: bytes) -> bytes:
    return type_.encode() + _USB + data


def encode_list(items: Sequence[bytes]) -> bytes:
    """``items`` are elements already encoded with :func:`encode_blob`."""
    return encode_blob(LIST, ormsgpack.packb(list(items)))


def decode_blob(raw: bytes, key: str, field: str) -> tuple[str, bytes]:
    type_, sep, data = raw.partition(_USB)
    if not sep:
        raise CorruptRecordError(key, f"field {field!r} has no type tag")
    try:
        return type_.decode(), data
    except UnicodeDecodeError as e:
        raise CorruptRecordError(key, f"field {field!r} has a garbled type tag") from e


def decode_list(data: bytes, key: str, field: str) -> list[bytes]:
    items = _unpack(data, key, field)
    if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
        raise CorruptRecordError(key, f"field {field!r} is not a list of items")
    return items


# ---- pending writes ----------------------------------------------------------------------
def encode_write(channel: str, value: tuple[str, bytes], task_path: str) -> bytes:
    return ormsgpack.packb([channel, value[0], value[1], task_path])


def decode_write(raw: bytes, key: str, field: str) -> tuple[str, tuple[str, bytes], str]:
    w = _unpack(raw, key, field)
    try:
        channel, type_, data, task_path = w
        if not (isinstance(channel, str) and isinstance(type_, str) and isinstance(data, bytes)
                and isinstance(task_path, str)):
            raise TypeError("wrong field types")
    except (TypeError, ValueError) as e:
        raise CorruptRecordError(key, f"field {field!r} is a malformed write: {e}") from e
    return channel, (type_, data), task_path
