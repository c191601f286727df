"""The value codec: JSON with type tags and an allow-list. Never pickle.

Plain JSON values (None, bool, int, float, str, lists, dicts with str keys) are stored as they
are. Any other type is stored as ``{"$al": TAG, "v": DATA}`` and comes back only if TAG is
registered here; an unknown tag is a clear error, never an import by name. Adapters extend the
allow-list (LangChain messages, Agents SDK items, CrewAI outputs); users register their own
pydantic models and dataclasses with :meth:`Codec.register_pydantic` /
:meth:`Codec.register_dataclass`.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from . import _errors
from ._errors import (
    CorruptRecordError,
    RecordedStepError,
    UnrecordableValueError,
    UnsupportedTypeError,
)
from ._records import Decision

__all__ = ["Codec", "default_codec", "fingerprint_and_text", "fingerprint_of", "json_bytes"]

TAG = "$al"
MAX_DEPTH = 200
# About 4200 decimal digits: larger ints are stored as hex (see Codec._encode).
_BIG_INT_BITS = 14_000
Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


def _how_to_register(t: type) -> str:
    """The registration call that fits ``t``, for an error message."""
    if isinstance(t, type) and issubclass(t, BaseModel):
        return f"ledger.codec.register_pydantic({t.__name__})"
    if dataclasses.is_dataclass(t):
        return f"ledger.codec.register_dataclass({t.__name__})"
    return (f"ledger.codec.register({t.__name__}, '<tag>', encode, decode) with encode "
            "returning JSON-able data and decode rebuilding the value")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Codec:
    """Encodes values to JSON-able data and back, through an allow-list of types."""

    max_depth: int = MAX_DEPTH
    """How deep a recorded value may nest (lists, dicts, registered types); deeper values
    are refused when recorded and reported as corrupt when read."""

    def __init__(self) -> None:
        self._encoders: dict[type, tuple[str, Encoder]] = {}
        self._decoders: dict[str, Decoder] = {}
        self._errors: dict[str, type[BaseException]] = {}
        self._plain: set[str] = set()
        self._register_builtins()

    # ---- the allow-list -------------------------------------------------------------------
    def register(self, cls: type, tag: str, encode: Encoder, decode: Decoder, *,
                 plain_json: bool = False) -> None:
        """Allow ``cls``: ``encode`` turns an instance into codec-encodable data, ``decode``
        turns that data (already decoded) back into an instance. ``plain_json``: ``encode``
        returns plain JSON that ``decode`` takes as it is, so the codec does not walk it
        either way (faster for large values)."""
        self._encoders[cls] = (tag, encode)
        self._decoders[tag] = decode
        if plain_json:
            self._plain.add(tag)
        else:
            self._plain.discard(tag)

    def register_pydantic(self, cls: type[BaseModel], tag: str | None = None) -> None:
        """Allow a pydantic model class; it is stored as its JSON-mode dump."""

        def encode(m: Any) -> Any:
            return m.model_dump(mode="json", exclude_unset=False)

        # A JSON-mode dump is plain JSON, and model_validate takes it back as it is.
        self.register(cls, tag or f"pydantic:{_qualname(cls)}", encode, cls.model_validate,
                      plain_json=True)

    def register_dataclass(self, cls: type, tag: str | None = None) -> None:
        """Allow a dataclass; its fields are encoded by this codec, recursively."""
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        names = [f.name for f in dataclasses.fields(cls) if f.init]

        def encode(obj: Any) -> Any:
            return {n: getattr(obj, n) for n in names}

        def decode(data: Any) -> Any:
            return cls(**data)

        self.register(cls, tag or f"dataclass:{_qualname(cls)}", encode, decode)

    def register_error(self, cls: type[BaseException]) -> None:
        """Allow an exception class to be raised again, with its recorded message, on replay."""
        self._errors[_qualname(cls)] = cls

    def knows(self, cls: type) -> bool:
        return cls in self._encoders

    # ---- values ---------------------------------------------------------------------------
    def encode(self, value: Any) -> Any:
        """Return JSON-able data for ``value``; raise :class:`UnsupportedTypeError` if a type
        in it is not allowed, :class:`UnrecordableValueError` if it nests deeper than
        ``max_depth`` (a structure that contains itself does)."""
        try:
            return self._encode(value, 0)
        except RecursionError:  # a deep stack below us, or an encoder that recurses
            raise UnrecordableValueError(
                "the value nests too deep to encode (or contains itself)") from None

    def _encode(self, value: Any, depth: int) -> Any:
        t = type(value)
        if value is None or t is bool or t is str:
            return value
        if t is int:
            # str(int) refuses more than 4300 digits by default, so json.dumps would fail;
            # hex is exact and unlimited.
            return value if value.bit_length() <= _BIG_INT_BITS else {TAG: "int", "v": hex(value)}
        if t is float:
            if value != value or value in (float("inf"), float("-inf")):
                return {TAG: "float", "v": repr(value)}
            return value
        if depth >= self.max_depth:
            raise UnrecordableValueError(
                f"the value nests deeper than {self.max_depth} levels (or contains itself); "
                "records are limited to that depth (Codec.max_depth)")
        depth += 1
        if t is list:
            return [self._encode(v, depth) for v in value]
        if t is dict:
            if all(type(k) is str for k in value) and TAG not in value:
                return {k: self._encode(v, depth) for k, v in value.items()}
            return {TAG: "dict", "v": [[self._encode(k, depth), self._encode(v, depth)]
                                       for k, v in value.items()]}
        entry = self._encoders.get(t)
        if entry is None:
            entry = self._find_by_base(t)
        if entry is None:
            raise UnsupportedTypeError(
                f"cannot record a value of type {_qualname(t)}: it is not on the codec's "
                f"allow-list. Register it: {_how_to_register(t)}"
            )
        tag, enc = entry
        if tag in self._plain:
            return {TAG: tag, "v": enc(value)}
        return {TAG: tag, "v": self._encode(enc(value), depth)}

    def _find_by_base(self, t: type) -> tuple[str, Encoder] | None:
        # Subclasses of built-in containers and enums, and exceptions, have generic forms.
        for base in t.__mro__[1:]:
            entry = self._encoders.get(base)
            if entry is not None and base in (tuple, set, frozenset, dt.datetime, dt.date):
                return entry
        return None

    def decode(self, data: Any, where: str = "a recorded value") -> Any:
        """The value ``data`` (from :meth:`encode`) stands for. A tagged value that does not
        decode, or data nesting deeper than ``max_depth``, raises :class:`CorruptRecordError`
        naming ``where`` (the record's key); an unknown tag raises
        :class:`UnsupportedTypeError`."""
        try:
            return self._decode(data, 0)
        except (UnsupportedTypeError, CorruptRecordError):
            raise
        except (_TooDeep, RecursionError):
            raise CorruptRecordError(where, f"the value nests deeper than {self.max_depth} "
                                     "levels") from None
        except Exception as e:  # a decoder refused its data: decimal, base64, a model...
            raise CorruptRecordError(
                where, f"a tagged value does not decode ({type(e).__name__}: {e})") from None

    def _decode(self, data: Any, depth: int) -> Any:
        t = type(data)
        if t is not list and t is not dict:
            return data
        if depth >= self.max_depth:
            raise _TooDeep
        depth += 1
        if t is list:
            return [self._decode(v, depth) for v in data]
        tag = data.get(TAG)
        if tag is None:
            return {k: self._decode(v, depth) for k, v in data.items()}
        if tag == "dict":
            return {self._decode(k, depth): self._decode(v, depth) for k, v in data["v"]}
        dec = self._decoders.get(tag)
        if dec is None:
            raise UnsupportedTypeError(
                f"recorded value has type tag {tag!r}, which is not on this codec's "
                "allow-list (register the type before replaying this run)"
            )
        return dec(data["v"] if tag in self._plain else self._decode(data["v"], depth))

    def dumps(self, value: Any) -> str:
        return json.dumps(self.encode(value), separators=(",", ":"), ensure_ascii=False)

    def dumps_bytes(self, value: Any) -> bytes:
        """:meth:`dumps` as UTF-8, exact for any str (see :meth:`value_bytes`)."""
        return self.value_bytes(self.encode(value))

    def value_bytes(self, data: Any, field: str | None = None) -> bytes:
        """Compact UTF-8 JSON of encoded ``data`` (of ``data[field]`` only, if given, for an
        envelope). A str holding a surrogate code point is not UTF-8: such strs are stored
        tagged (``str``: their surrogate-passing UTF-8 in base64) and come back exactly."""
        try:
            return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:
            pass
        if field is None:
            data = self._tag_surrogates(data)
        else:
            data = {**data, field: self._tag_surrogates(data[field])}
        return json_bytes(data)  # still failing: text inside a plain-JSON type, escaped

    def _tag_surrogates(self, data: Any) -> Any:
        t = type(data)
        if t is str:
            try:
                data.encode()
                return data
            except UnicodeEncodeError:
                raw = data.encode("utf-8", "surrogatepass")
                return {TAG: "str", "v": base64.b64encode(raw).decode()}
        if t is list:
            return [self._tag_surrogates(v) for v in data]
        if t is not dict:
            return data
        tag = data.get(TAG)
        if tag is not None:
            return data if tag in self._plain else {TAG: tag, "v": self._tag_surrogates(data["v"])}
        pairs = [(self._tag_surrogates(k), self._tag_surrogates(v)) for k, v in data.items()]
        if all(type(k) is str for k, _ in pairs):
            return dict(pairs)
        return {TAG: "dict", "v": [[k, v] for k, v in pairs]}

    def loads(self, text: str | bytes, where: str = "a recorded value") -> Any:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise CorruptRecordError(where, f"not JSON ({type(e).__name__}: {e})") from None
        return self.decode(data, where)

    # ---- errors ---------------------------------------------------------------------------
    def encode_error(self, exc: BaseException) -> dict[str, Any]:
        """The error as JSON-able data; never raises (what cannot be encoded is left out)."""
        try:
            message = str(exc)
        except Exception:
            message = f"<{type(exc).__name__} whose text could not be read>"
        args: Any
        try:
            args = self.encode(list(exc.args))
        except Exception:  # an argument off the allow-list, too deep, ...: keep the text
            args = None
        return {"type": _qualname(type(exc)), "message": message, "args": args}

    def decode_error(self, data: dict[str, Any]) -> BaseException:
        """The recorded exception, rebuilt if its class is allowed (built-in exceptions and
        registered ones); otherwise a :class:`RecordedStepError` carrying its type and text."""
        type_name = str(data.get("type", "Exception"))
        message = str(data.get("message", ""))
        cls = self._errors.get(type_name)
        if cls is None and type_name.startswith("builtins."):
            candidate = getattr(builtins, type_name.removeprefix("builtins."), None)
            if isinstance(candidate, type) and issubclass(candidate, Exception):
                cls = candidate
        if cls is not None:
            args = data.get("args")
            try:
                return cls(*self._decode(args, 0)) if isinstance(args, list) else cls(message)
            except Exception:
                # A constructor with other parameters: same class and text, attributes unset.
                exc = cls.__new__(cls)
                BaseException.__init__(exc, message)
                return exc
        return RecordedStepError(type_name, message)

    # ---- the built-in allow-list ----------------------------------------------------------
    def _register_builtins(self) -> None:
        self.register(tuple, "tuple", list, tuple)
        self.register(set, "set", list, set)
        self.register(frozenset, "frozenset", list, frozenset)
        self.register(bytes, "bytes", lambda b: base64.b64encode(b).decode(), base64.b64decode)
        self.register(dt.datetime, "datetime", dt.datetime.isoformat, dt.datetime.fromisoformat)
        self.register(dt.date, "date", dt.date.isoformat, dt.date.fromisoformat)
        # Exact as [days, seconds, microseconds]; older records hold float seconds.
        self.register(dt.timedelta, "timedelta",
                      lambda d: [d.days, d.seconds, d.microseconds], _timedelta, plain_json=True)
        self.register(decimal.Decimal, "decimal", str, decimal.Decimal)
        self.register(uuid.UUID, "uuid", str, uuid.UUID)
        self._decoders["float"] = float
        self._decoders["int"] = _int_from_hex
        self._decoders["str"] = _str_from_base64
        self.register_pydantic(Decision, "agentledger.Decision")
        for name in _errors.__all__:
            err = getattr(_errors, name)
            if isinstance(err, type) and issubclass(err, Exception):
                self.register_error(err)


class _TooDeep(Exception):
    pass


def _timedelta(data: Any) -> dt.timedelta:
    if isinstance(data, list):
        days, seconds, micros = data
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    return dt.timedelta(seconds=data)


def _str_from_base64(text: str) -> str:
    return base64.b64decode(text, validate=True).decode("utf-8", "surrogatepass")


def _int_from_hex(text: str) -> int:
    if not isinstance(text, str):
        raise TypeError(f"expected a hex string, got {type(text).__name__}")
    return int(text, 16)


def json_bytes(data: Any) -> bytes:
    """Compact JSON of JSON-able ``data`` as UTF-8. A str with a lone surrogate cannot be
    UTF-8; JSON's ``\\u`` escapes carry it exactly, so such data is written ASCII-escaped."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":")).encode()


def default_codec() -> Codec:
    return Codec()


def fingerprint_of(codec: Codec, call: Any) -> str:
    """A digest of a call's normalised inputs."""
    return fingerprint_and_text(codec, call)[0]


def fingerprint_and_text(codec: Codec, call: Any) -> tuple[str, str]:
    """The digest of a call's normalised inputs and their canonical JSON text. Values the
    codec cannot encode count by type only (a client object, say): their repr often holds a
    memory address; nesting beyond the codec's depth counts as a marker."""
    try:
        data = codec.encode(call)
    except (UnsupportedTypeError, UnrecordableValueError):
        data = _loose(codec, call, 0)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    # surrogatepass: a lone surrogate in the inputs still has one digest.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32], text


def _loose(codec: Codec, value: Any, depth: int) -> Any:
    if depth >= codec.max_depth:
        return "<too deep>"
    if isinstance(value, list | tuple):
        return [_loose(codec, v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _loose(codec, v, depth + 1) for k, v in value.items()}
    try:
        return codec.encode(value)
    except (UnsupportedTypeError, UnrecordableValueError):
        return f"<{_qualname(type(value))}>"
