"""The examples record where `agentledger runs` looks: the default key prefix, the default URL."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from _support import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_use_the_default_prefix(example: Path) -> None:
    tree = ast.parse(example.read_text())
    given = [(node.lineno, kw.arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
             for kw in node.keywords if kw.arg in ("prefix", "url")]
    assert given == [], f"{example}: {given} (the CLI would not list these runs by default)"
