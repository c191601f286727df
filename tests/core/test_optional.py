"""Optional frameworks: a too old version is refused with the reason, at import."""

from __future__ import annotations

import importlib.metadata

import pytest

from agentledger._optional import require_version, version_below


@pytest.mark.parametrize(("found", "minimum", "below"), [
    ("1.15.28", "1.15.29", True),
    ("1.15.3", "1.15.29", True),
    ("1.15.29", "1.15.29", False),
    ("1.15.30", "1.15.29", False),
    ("1.16", "1.15.29", False),
    ("1.15", "1.15.0", False),
    ("1.15.29rc1", "1.15.29", False),
    ("2.0.0.post1", "1.15.29", False),
])
def test_version_below(found: str, minimum: str, below: bool) -> None:
    assert version_below(found, minimum) is below


def test_require_version_names_what_it_needs_found_and_why() -> None:
    found = importlib.metadata.version("pytest")
    require_version("pytest", "1.0", "testing", "never shown.")
    with pytest.raises(ImportError) as raised:
        require_version("pytest", "999.1", "some-extra", "it lacks the thing.")
    assert str(raised.value) == (
        f"agentledger.some_extra needs pytest>=999.1, found {found}: it lacks the thing. "
        "pip install -U 'agentledger[some-extra]'")
