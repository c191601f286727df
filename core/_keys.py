"""Redis key names. Every key of one run carries the hash tag ``{run_id}``, so a Redis Cluster
keeps a run in one slot and each per-run Lua script touches a single slot."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunKeys", "check_run_id", "runs_index"]

_MAX_RUN_ID = 200
_FORBIDDEN = set("{}\r\n\0")


def check_run_id(run_id: object) -> str:
    """Return ``run_id`` if usable as a run id, else raise ``ValueError`` saying why."""
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, not {type(run_id).__name__}")
    if not run_id:
        raise ValueError("run_id must not be empty")
    if len(run_id) > _MAX_RUN_ID:
        raise ValueError(f"run_id is {len(run_id)} characters long; the limit is {_MAX_RUN_ID}")
    bad = _FORBIDDEN.intersection(run_id)
    if bad:
        raise ValueError(
            f"run_id {run_id!r} contains {sorted(bad)!r}; braces would break the Redis "
            "Cluster hash tag"
        )
    return run_id


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The keys of one run under one prefix."""

    prefix: str
    run_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.run_id}}}"

    @property
    def run(self) -> str:
        """Hash: the run record (status, lease, fencing token, counters)."""
        return f"{self.base}:run"

    @property
    def steps(self) -> str:
        """Hash: ``m:<step key>`` the step's metadata, ``r:<step key>`` its outcome payload."""
        return f"{self.base}:steps"

    @property
    def keyset(self) -> str:
        """Set: further keys of this run (adapters' own), expired and deleted with it."""
        return f"{self.base}:keys"

    def extra(self, name: str) -> str:
        """A key of an adapter's own in this run's slot; register it with ``track_key``."""
        return f"{self.base}:{name}"


def runs_index(prefix: str) -> str:
    """Sorted set of run ids scored by last update (ms). Lives outside any run's slot."""
    return f"{prefix}:runs"
