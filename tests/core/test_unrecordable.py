"""Issue 8 item 1: whatever a step returns, its body runs once. A value JSON can carry comes back
exactly; any other (a lone surrogate, an int past Python's 4300-digit limit, deep or cyclic
structures, types off the allow-list, oversized ones) is recorded as a failure naming why."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import agentledger
from agentledger import Ledger, LedgerError, StepCall


def deep_list(n: int) -> Any:
    v: Any = "bottom"
    for _ in range(n):
        v = [v]
    return v


def deep_dict(n: int) -> Any:
    v: Any = 0
    for _ in range(n):
        v = {"k": v}
    return v


def cyclic_list() -> Any:
    a: list[Any] = [1]
    a.append(a)
    return a


def cyclic_dict() -> Any:
    d: dict[str, Any] = {}
    d["self"] = [d]
    return d


class Opaque:
    pass


hashable = st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none(),
                     st.tuples(st.integers(), st.text(max_size=3)))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(),
    st.integers(4200, 4600).map(lambda n: 7 * 10**n),  # over 4300 digits and just under
    st.integers(4200, 4600).map(lambda n: -(10**n) + 1),
    st.text(), st.text(st.characters(categories=["Cs", "Lu", "Nd"])),  # lone surrogates
    st.binary(max_size=20), st.decimals(), st.datetimes(), st.dates(),
    st.timedeltas(), st.uuids(), st.builds(Opaque),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(hashable, inner, max_size=3),  # non-str keys: a tagged dict
        st.frozensets(hashable, max_size=4), st.sets(hashable, max_size=4),
    ),
    max_leaves=12,
) | st.sampled_from(["deep_list", "deep_dict", "cyclic_list", "cyclic_dict", "big_int"]).map(
    lambda name: Special(name))


class Special:
    """A value too deep or too large for hypothesis to print: built inside the test."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Special({self.name!r})"

    def build(self) -> Any:
        if self.name == "big_int":
            return 10**5000
        if self.name.startswith("cyclic"):
            return globals()[self.name]()
        return globals()[self.name](5000)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items()) \
            and all(same(k, next(k2 for k2 in b if k2 == k)) for k in a)
    return bool(a == b)


_ids = itertools.count()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=values)
@example(value="lone \ud800 surrogate")
@example(value=Special("big_int"))
@example(value=Special("deep_list"))
@example(value=Special("cyclic_list"))
@example(value={"x": "\udfff"})
@example(value=["\ud800\udc00", {"\udbff\udfff": 1}])
def test_any_result_runs_the_body_once_across_three_starts(ledger: Ledger, value: Any) -> None:
    if isinstance(value, Special):
        value = value.build()
    run_id = f"p{next(_ids)}"
    calls = []

    @agentledger.step(in_doubt="rerun")
    def produce() -> Any:
        calls.append(1)
        return value

    outcomes: list[tuple[str, Any]] = []
    for _ in range(3):
        try:
            with ledger.run(run_id):
                outcomes.append(("value", produce()))
        except LedgerError as e:
            outcomes.append(("error", e))
    assert len(calls) == 1, outcomes
    kind, first = outcomes[0]
    for other_kind, other in outcomes[1:]:
        assert other_kind == kind
        if kind == "value":
            assert same(first, other), (first, other)
        else:
            assert type(other) is type(first) and str(other) == str(first)
    if kind == "value":
        assert same(first, value)
    (rec,) = ledger.steps(run_id)
    assert rec.status == ("completed" if kind == "value" else "failed")


@pytest.mark.parametrize("value, cause", [
    (deep_list(5000), "nests deeper than 200 levels"),
    (cyclic_dict(), "nests deeper than 200 levels (or contains itself)"),
    (Opaque(), "not on the codec's allow-list"),
])
def test_an_unrecordable_result_is_a_recorded_failure_naming_the_cause(
        ledger: Ledger, value: Any, cause: str) -> None:
    with pytest.raises(LedgerError, match=re.escape(cause)), ledger.run("r"):
        agentledger.step(name="produce")(lambda: value)()
    (rec,) = ledger.steps("r")
    assert rec.status == "failed" and cause in rec.outcome_text()


def test_lone_surrogates_and_huge_ints_round_trip_exactly(ledger: Ledger) -> None:
    value = {"text": "a\ud800b\udfff", "n": -(10**4400) - 7, "keys": {10**4500: "big key"}}
    for i in range(2):
        with ledger.run("r") as s:
            start = s.begin(StepCall(kind="tool", name="t", inputs={"q": "\ud801"}))
            if i == 0:
                assert not start.replayed
                s.record(start, value)
            else:
                assert start.replayed and s.result(start) == value


def test_error_with_unencodable_text_is_recorded(ledger: Ledger) -> None:
    calls = []

    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    @agentledger.step
    def boom() -> None:
        calls.append(1)
        raise ValueError("bad \ud800 input", deep_list(500), uuid.uuid4(), dt.date(2026, 1, 1))

    @agentledger.step
    def weird() -> None:
        calls.append(2)
        raise Weird()

    for _ in range(3):
        with ledger.run("r"):
            with pytest.raises(ValueError, match="bad"):
                boom()
            with pytest.raises((Weird, agentledger.RecordedStepError)):
                weird()
    assert calls == [1, 2]
    assert issubclass(agentledger.UnrecordableValueError, ValueError)
