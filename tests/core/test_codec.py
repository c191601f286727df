"""The codec: JSON with tags and an allow-list; exported names."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agentledger
from agentledger import Codec, UnsupportedTypeError

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(), st.binary(), st.datetimes(), st.dates(), st.uuids(),
                    st.decimals(allow_nan=False, allow_infinity=False))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4),
                            st.dictionaries(st.integers(), inner, max_size=3),
                            st.frozensets(st.integers(), max_size=3)),
    max_leaves=20,
)


@given(values)
def test_round_trip_keeps_values_and_types(value: object) -> None:
    codec = Codec()
    back = codec.loads(codec.dumps(value))
    assert back == value
    assert type(back) is type(value)


def test_special_floats_and_tag_lookalikes() -> None:
    codec = Codec()
    back = codec.loads(codec.dumps([math.inf, -math.inf, {"$al": "tuple", "v": [1]}]))
    assert back[:2] == [math.inf, -math.inf]
    assert back[2] == {"$al": "tuple", "v": [1]}  # a user dict that looks like a tag stays a dict
    assert math.isnan(codec.loads(codec.dumps(math.nan)))


def test_unknown_types_are_refused_both_ways() -> None:
    codec = Codec()

    class Secret:
        pass

    with pytest.raises(UnsupportedTypeError, match="allow-list"):
        codec.dumps({"x": Secret()})
    with pytest.raises(UnsupportedTypeError, match=r"'module:os\.system'"):
        codec.loads('{"$al": "module:os.system", "v": "rm -rf /"}')


def test_builtin_types() -> None:
    codec = Codec()
    value = {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "d": dt.date(2026, 1, 2),
             "span": dt.timedelta(seconds=90), "amount": decimal.Decimal("10.05"),
             "id": uuid.UUID(int=7), "raw": b"\x00\x01", "set": {1, 2}}
    assert codec.loads(codec.dumps(value)) == value


def test_exported_members() -> None:
    for name in agentledger.__all__:
        assert hasattr(agentledger, name), name
    assert sorted(agentledger.__all__) == agentledger.__all__


def test_pydantic_values_keep_lookalike_keys_and_nesting() -> None:
    from pydantic import BaseModel

    class Inner(BaseModel):
        data: dict[str, object]

    class Outer(BaseModel):
        items: list[Inner]
        when: dt.datetime

    codec = Codec()
    codec.register_pydantic(Outer)
    value = Outer(items=[Inner(data={"$al": "tuple", "v": [1, 2]})],
                  when=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    back = codec.loads(codec.dumps({"out": value, "pair": (value, 1)}))
    assert back == {"out": value, "pair": (value, 1)}
    assert back["out"].items[0].data == {"$al": "tuple", "v": [1, 2]}
