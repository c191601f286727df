"""The Redis keys of a LangGraph thread: the run's hash tag, registered with the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentledger import Ledger

__all__ = ["NAMES", "ThreadKeys", "text", "thread_keys", "thread_of", "thread_pattern"]

# Order matters: every Lua script takes the keys in this order (see _ckpt_lua).
NAMES = ("cp", "refs", "ix", "blobs", "chain", "writes", "wix", "runs")


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The Redis keys of one thread, in the order every script takes them."""

    thread_id: str
    all: list[str]

    @property
    def cp(self) -> str:
        return self.all[0]

    @property
    def ix(self) -> str:
        return self.all[2]

    @property
    def blobs(self) -> str:
        return self.all[3]

    @property
    def writes(self) -> str:
        return self.all[5]

    @property
    def runs(self) -> str:
        return self.all[7]

    @property
    def own(self) -> list[str]:
        return self.all[:8]

    @property
    def keyset(self) -> str:
        return self.all[8]


def text(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


def thread_keys(ledger: Ledger, thread_id: Any) -> ThreadKeys:
    tid = str(thread_id)
    rk = ledger.keys(tid)
    return ThreadKeys(tid, [rk.extra(f"lg:{n}") for n in NAMES] + [rk.keyset, rk.run, rk.steps])


def thread_pattern(prefix: str, name: str) -> str:
    """A SCAN pattern matching key ``name`` of every thread under ``prefix``."""
    escaped = "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in prefix)
    return f"{escaped}:{{*}}:lg:{name}"


def thread_of(prefix: str, key: bytes | str) -> str:
    k = text(key)
    return k[len(prefix) + 2 : k.rindex("}:lg:")]
