"""A missing optional framework says how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"agentledger.{extra.replace('-', '_')} needs {module!r}: "
            f"pip install 'agentledger[{extra}]'"
        ) from e
