"""The crash matrix: a real process killed (SIGKILL) at every call boundary of an eleven-call
graph, restarted with the same thread id, in each durability mode: the graph API sync and
async, and the same calls through the functional API (@entrypoint/@task).

The child (children/lg_crash_matrix.py) imports LangGraph once and forks one process per crash
and one per restart, so the whole matrix costs nine Python starts.
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


def _check_case(base: dict[str, Any], case: dict[str, Any]) -> None:
    name, point = case["case"], case["crash"][0]
    assert case["first"] == -9, f"{name}: the first process was not killed ({case['first']})"
    assert case["second"] == 0, f"{name}: the restart failed ({case['second']})"
    assert case["state"] == base["state"], f"{name}: final state differs from the uncrashed run"
    # Stable keys: the restarted run recorded exactly the steps of the uncrashed one.
    assert sorted(s[0] for s in case["steps"]) == sorted(s[0] for s in base["steps"]), name
    assert all(s[1] == "completed" for s in case["steps"]), name
    effects, expected = _effects(case["effects"]), _effects(base["effects"])
    assert set(effects) == set(expected), name
    twice = [k for k, iks in effects.items() if len(iks) > 1]
    for k in twice:
        iks = effects[k]
        assert len(iks) == 2 and iks[0] == iks[1], f"{name}: {k} ran {iks}"
    if twice:
        # Only a step killed inside its body runs again: the one at the crash point, or a
        # parallel sibling that was in flight. Each such step shows a second attempt.
        assert len(twice) <= sum(1 for s in case["steps"] if s[2] >= 2), name
        if point != "before_record":
            # Killed elsewhere: only one of the two parallel emails can have been in flight.
            assert twice in (["send_email|ann"], ["send_email|bob"]), f"{name}: {twice}"
    if point == "after_claim":
        assert any(s[2] == 2 for s in case["steps"]), f"{name}: no second attempt recorded"


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
@pytest.mark.parametrize("mode", ["sync", "async", "func"])
def test_lg_crash_matrix(redis_url: str, prefix: str, mode: str, durability: str) -> None:
    out = tmpdir("lg-matrix-")
    proc = run_child(CHILD, redis_url, prefix, str(out), mode, durability, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    base, cases = rows[0], rows[1:]
    assert base["first"] == 0 and base["state"] is not None, proc.stderr[-3000:]
    kinds = Counter(s[3] for s in base["steps"])
    assert kinds == {"llm": 6, "tool": 4, "step": 1}, kinds
    assert sorted(_effects(base["effects"])) == ["lookup|price", "record_note|finished",
                                                 "send_email|ann", "send_email|bob",
                                                 "send_email|boss"]
    assert all(len(v) == 1 for v in _effects(base["effects"]).values())
    # 5 intent steps x 2 claim points + 11 steps x 2 record points.
    assert len(cases) == 32
    for case in cases:
        _check_case(base, case)
    assert not killed(proc)
