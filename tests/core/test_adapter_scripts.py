"""An adapter's own scripts on a run's step connection (``register_scripts``, ``send_script``):
in order with the step records, at the run's level, with a ``defer`` that pipelines at sync."""

from __future__ import annotations

from typing import Any

import pytest

from agentledger import Ledger, LedgerError

# KEYS[1] a list; ARGV[1] an item -> the list's length
_PUSH = "return redis.call('RPUSH', KEYS[1], ARGV[1])"


def test_a_name_takes_one_script(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        ledger.register_scripts({"test.push": _PUSH})
        ledger.register_scripts({"test.push": _PUSH})  # the same again: nothing to do
        with pytest.raises(ValueError, match="different script"):
            ledger.register_scripts({"test.push": "return 1"})
        with pytest.raises(ValueError, match="different script"):
            ledger.register_scripts({"claim": _PUSH})  # the ledger's own names too
    finally:
        ledger.close()


@pytest.mark.parametrize(("level", "defer", "waits"),
                         [("sync", False, False), ("sync", True, True), ("async", False, True)])
def test_sent_in_order_and_read_at_the_barrier(redis_url: str, prefix: str, level: str,
                                               defer: bool, waits: bool) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    ledger.register_scripts({"test.push": _PUSH})
    key = f"{prefix}:{{r}}:list"
    replies: list[Any] = []
    try:
        with ledger.run("r") as session:
            session.use_durability(level)
            for i in range(3):
                session.send_script("test.push", [key], [str(i)], replies.append, defer=defer)
            assert session._hot.unacknowledged == (3 if waits else 0)
            assert len(replies) == (0 if waits else 3)
            session.barrier()
            assert replies == [1, 2, 3]
            assert session.call_script("test.push", [key], ["3"]) == 4
        assert ledger.redis.lrange(key, 0, -1) == [b"0", b"1", b"2", b"3"]
    finally:
        ledger.redis.delete(key)
        ledger.close()


def test_a_verdict_is_raised_at_the_barrier(redis_url: str, prefix: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    ledger.register_scripts({"test.push": _PUSH})
    key = f"{prefix}:{{r}}:list"

    def refuse(reply: Any) -> None:
        raise LedgerError(f"refused {reply}")

    try:
        session = ledger.open_run("r")
        session.use_durability("async")
        session.send_script("test.push", [key], ["x"], refuse)
        with pytest.raises(LedgerError, match="refused 1"):
            session.barrier()
        # Read by a barrier, not by the record's sender, who went on: the session stops, and
        # the run is not marked ended (it resumes from its records).
        with pytest.raises(LedgerError, match="refused 1"):
            session.finish("completed")
        run = ledger.get_run("r")
        assert run is not None and run.status == "running"
    finally:
        ledger.redis.delete(key)
        ledger.close()
