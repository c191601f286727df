"""The crash matrix: a real process killed (SIGKILL) at every call boundary of an eleven-call
graph, restarted with the same thread id, in each durability mode: the graph API sync and
async, the same calls through the functional API (@entrypoint/@task), and a create_agent agent
recorded by DurableMiddleware.

The child (children/lg_crash_matrix.py) imports LangGraph once and forks one process per crash
and one per restart, so the whole matrix costs twelve Python starts.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from _support import killed, run_child, tmpdir

CHILD = Path(__file__).parent / "children" / "lg_crash_matrix.py"


def _effects(rows: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for line in rows:
        name, arg, ik = line.split("|")
        out[f"{name}|{arg}"].append(ik)
    return out


def _check_case(base: dict[str, Any], case: dict[str, Any], durability: str) -> None:
    name, point = case["case"], case["crash"][0]
    assert case["first"] == -9, f"{name}: the first process was not killed ({case['first']})"
    assert case["second"] == 0, f"{name}: the restart failed ({case['second']})"
    assert case["state"] == base["state"], f"{name}: final state differs from the uncrashed run"
    # Stable keys: the restarted run recorded exactly the steps of the uncrashed one.
    assert sorted(s[0] for s in case["steps"]) == sorted(s[0] for s in base["steps"]), name
    assert all(s[1] == "completed" for s in case["steps"]), name
    effects, expected = _effects(case["effects"]), _effects(base["effects"])
    assert set(effects) == set(expected), name
    # Whatever Redis held as completed after the kill never ran again, at every level.
    kept, at_kill = set(case["kept_completed"]), Counter(case["effects_at_kill"])
    for line, n in Counter(case["effects"]).items():
        if line.split("|")[2] in kept:
            assert n == at_kill[line], f"{name}: {line} ran again after it was recorded"
    twice = [k for k, iks in effects.items() if len(iks) > 1]
    for k in twice:
        iks = effects[k]
        assert len(iks) == 2 and iks[0] == iks[1], f"{name}: {k} ran {iks}"
    if twice:
        # At every level only a step killed inside its body runs again: the one at the crash
        # point, or a parallel sibling that was in flight. Each such step shows a second attempt.
        # (At "async"/"exit" the records since the last barrier are unacknowledged, but a killed
        # process loses none it sent: they go with replies off, and the restart waits until
        # Redis has read them; docs/durability.md.)
        assert len(twice) <= sum(1 for s in case["steps"] if s[2] >= 2), name
        if point != "before_record":
            # Killed elsewhere: only one of the two parallel emails can have been in flight.
            assert twice in (["send_email|ann"], ["send_email|bob"]), f"{name}: {twice}"
    if point == "after_claim":
        assert any(s[2] == 2 for s in case["steps"]), f"{name}: no second attempt recorded"


PIPELINE = ({"llm": 6, "tool": 4, "step": 1},
            ["lookup|price", "record_note|finished", "send_email|ann", "send_email|bob",
             "send_email|boss"])
AGENT = ({"llm": 3, "tool": 3}, ["lookup|price", "send_email|ann", "send_email|bob"])


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
@pytest.mark.parametrize("mode", ["sync", "async", "func", "agent"])
def test_lg_crash_matrix(redis_url: str, prefix: str, mode: str, durability: str) -> None:
    out = tmpdir("lg-matrix-")
    proc = run_child(CHILD, redis_url, prefix, str(out), mode, durability, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    base, cases = rows[0], rows[1:]
    assert base["first"] == 0 and base["state"] is not None, proc.stderr[-3000:]
    expected_kinds, expected_effects = AGENT if mode == "agent" else PIPELINE
    kinds = Counter(s[3] for s in base["steps"])
    assert kinds == expected_kinds, kinds
    assert sorted(_effects(base["effects"])) == expected_effects
    assert all(len(v) == 1 for v in _effects(base["effects"]).values())
    # Every intent step at the 2 claim points, every step at the 2 record points.
    intents = sum(n for k, n in kinds.items() if k != "llm")
    assert len(cases) == 2 * intents + 2 * sum(kinds.values())
    for case in cases:
        try:
            _check_case(base, case, durability)
        except AssertionError as e:  # the children's errors are in the driver's stderr
            raise AssertionError(f"{e}\n{proc.stderr[-3000:]}") from None
    assert not killed(proc)
