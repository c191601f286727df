"""A missing optional framework says how to install it; a too old one says why it cannot work."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from types import ModuleType

__all__ = ["require", "require_version", "version_below"]


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"agentledger.{extra.replace('-', '_')} needs {module!r}: "
            f"pip install 'agentledger[{extra}]'"
        ) from e


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise ValueError(f"not a release version: {version!r}")
    return tuple(int(part) for part in match.group().split("."))


def version_below(found: str, minimum: str) -> bool:
    """Whether release ``found`` is older than ``minimum`` (pre-release tags are ignored)."""
    a, b = _release(found), _release(minimum)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) < b + (0,) * (width - len(b))


def require_version(dist: str, minimum: str, extra: str, why: str) -> None:
    """Refuse an installed ``dist`` older than ``minimum``, saying ``why`` it would not work."""
    found = importlib.metadata.version(dist)
    if version_below(found, minimum):
        raise ImportError(
            f"agentledger.{extra.replace('-', '_')} needs {dist}>={minimum}, found {found}: "
            f"{why} pip install -U 'agentledger[{extra}]'"
        )
