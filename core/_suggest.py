"""Commands agentledger suggests for copy-paste, quoted for a POSIX shell.

Run ids and step keys come from user code and from Redis; a suggested command is pasted into a
shell, so every argument is quoted and ``--`` ends the options before the first positional one.
"""

from __future__ import annotations

import shlex

__all__ = ["command"]


def command(*words: str, positional: tuple[str, ...] = (), prefix: str | None = None) -> str:
    """``agentledger WORDS [--prefix P] -- POSITIONAL...``, each part shell-quoted.

    ``--`` is written only when a positional argument starts with ``-`` (it keeps the common
    command short and the unusual one safe)."""
    parts = ["agentledger", *words]
    if prefix is not None and prefix != "agentledger":
        parts += ["--prefix", prefix]
    if any(p.startswith("-") for p in positional):
        parts.append("--")
    parts += positional
    return shlex.join(parts)
