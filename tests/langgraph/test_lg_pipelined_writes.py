"""Checkpoint writes on the run's step connection, at the invocation's durability level.

At ``durability="sync"`` a superstep's task writes go unacknowledged and its checkpoint is
acknowledged with them, in one round trip, before the next superstep; at ``"async"``/``"exit"``
both are written without waiting and read at the next barrier (a read, the end of the
invocation, the bounds). What a SIGKILL leaves is a prefix of what was sent, and a completed
side effect never runs again.
"""

from __future__ import annotations

import json
import operator
import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
import redis
from langgraph.graph import END, START, StateGraph

from _support import killed, run_child, tmpdir
from agentledger import Ledger, LedgerError, RunStatus
from agentledger.langgraph import DurableCheckpointer
from agentledger.langgraph._ckpt_keys import thread_keys

CHILD = Path(__file__).parent / "children" / "lg_pipelined_kill.py"
NODES = 6


class State(TypedDict):
    count: int
    log: Annotated[list[str], operator.add]


def _linear(saver: DurableCheckpointer, nodes: int, inside: Any = None) -> Any:
    def node(i: int) -> Any:
        def run(state: State) -> dict[str, Any]:
            if inside is not None:
                inside(i)
            return {"count": state["count"] + 1, "log": [f"n{i}"]}
        return run

    b = StateGraph(State)
    prev = START
    for i in range(nodes):
        b.add_node(f"n{i}", node(i))
        b.add_edge(prev, f"n{i}")
        prev = f"n{i}"
    b.add_edge(prev, END)
    return b.compile(checkpointer=saver)


def _checkpoint(step: int) -> tuple[Any, Any, Any, Any]:
    """put()'s arguments for a checkpoint of a two-channel state at ``step``."""
    cid = f"1ef00000-0000-6000-8000-{step:012d}"
    versions = {"count": f"{step + 1:016}.00000000", "log": f"{step + 1:016}.00000000"}
    checkpoint = {"v": 4, "id": cid, "ts": "2026-12-01T00:00:00+00:00",
                  "channel_values": {"count": step, "log": [f"n{i}" for i in range(step)]},
                  "channel_versions": versions, "versions_seen": {}, "updated_channels": None}
    return checkpoint, {"source": "loop", "step": step, "parents": {}}, versions, cid


@pytest.mark.parametrize("level", ["sync", "async"])
def test_writes_go_on_the_runs_connection(redis_url: str, prefix: str, level: str) -> None:
    """The level decides what is waited for; a read is a barrier that sees every write."""
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    saver = DurableCheckpointer(ledger)
    other = DurableCheckpointer(Ledger.from_url(redis_url, prefix=prefix))  # a plain reader
    session = ledger.open_run("t", kind="langgraph")
    session.use_durability(level)
    token = session.activate()
    hot = session._hot
    try:
        base: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        checkpoint, metadata, versions, cid = _checkpoint(1)
        saved = saver.put(base, checkpoint, metadata, versions)
        assert hot.unacknowledged == (1 if level == "async" else 0)
        saver.put_writes(saved, [("count", 2), ("log", ["n1"])], "task-1")
        # Task writes are never waited for on their own, at any level.
        assert hot.unacknowledged == (2 if level == "async" else 1)
        checkpoint, metadata, versions, _ = _checkpoint(2)
        saver.put(saved, checkpoint, metadata, versions)
        if level == "sync":
            # Acknowledged before put returns, with the writes sent before it.
            assert hot.unacknowledged == 0
            assert other.get_tuple({"configurable": {"thread_id": "t",
                                                     "checkpoint_id": cid}}).pending_writes
        else:
            assert hot.unacknowledged == 3
        got = saver.get_tuple({"configurable": {"thread_id": "t"}})  # a barrier
        assert hot.unacknowledged == 0
        assert got is not None and got.checkpoint["channel_values"] == {
            "count": 2, "log": ["n0", "n1"]}
        first = saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_id": cid}})
        assert first is not None
        assert [(t, c, v) for t, c, v in first.pending_writes] == [
            ("task-1", "count", 2), ("task-1", "log", ["n1"])]
    finally:
        session.deactivate(token)
        session.finish(RunStatus.COMPLETED)
        ledger.close()
        other.ledger.close()


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_a_graph_saves_all_at_every_level(redis_url: str, prefix: str, durability: str) -> None:
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    saver = DurableCheckpointer(ledger)
    other = DurableCheckpointer(Ledger.from_url(redis_url, prefix=prefix))
    seen: list[int | None] = []

    def inside(i: int) -> None:
        # What a reader that is not the run sees while node i runs: at "sync" the checkpoint
        # of the superstep before it is stored already.
        state = other.get_tuple({"configurable": {"thread_id": "g"}})
        seen.append(None if state is None else state.metadata["step"])

    graph = _linear(saver, 4, inside)
    try:
        out = graph.invoke({"count": 0, "log": []}, {"configurable": {"thread_id": "g"}},
                           durability=durability)
        assert out == {"count": 4, "log": ["n0", "n1", "n2", "n3"]}
        if durability == "sync":
            assert seen == [0, 1, 2, 3]
        # Every write is acknowledged when the invocation returns.
        final = other.get_tuple({"configurable": {"thread_id": "g"}})
        assert final is not None and final.checkpoint["channel_values"] == out
        history = list(other.list({"configurable": {"thread_id": "g"}}))
        assert len(history) == (1 if durability == "exit" else 6)
        run = ledger.get_run("g")
        assert run is not None and run.status == RunStatus.COMPLETED
    finally:
        ledger.close()
        other.ledger.close()


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_refused_checkpoint_write_fails_the_graph_call(redis_url: str, prefix: str,
                                                        durability: str) -> None:
    """A write Redis refuses (here: the thread's blob hash replaced by a string) is raised
    from the graph call, at once at "sync", at the end of the invocation at "async"; the
    run is not marked ended."""
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    saver = DurableCheckpointer(ledger)
    blobs = thread_keys(ledger, "bad").blobs
    ran: list[int] = []

    def inside(i: int) -> None:
        ran.append(i)
        if i == 1:
            ledger.redis.delete(blobs)
            ledger.redis.set(blobs, "not a hash")

    graph = _linear(saver, 4, inside)
    try:
        with pytest.raises(LedgerError, match=r"WRONGTYPE|wrong kind"):
            graph.invoke({"count": 0, "log": []}, {"configurable": {"thread_id": "bad"}},
                         durability=durability)
        if durability == "sync":
            assert ran == [0, 1]  # the checkpoint after n1 failed before n2 began
        else:
            assert ran == [0, 1, 2, 3]  # sent without waiting: known at the end
        run = ledger.get_run("bad")
        assert run is not None and run.status == (
            RunStatus.FAILED if durability == "sync" else RunStatus.RUNNING)
    finally:
        ledger.redis.delete(blobs)
        ledger.close()


def test_a_lost_list_base_is_put_whole_at_sync_and_raised_at_async(redis_url: str,
                                                                   prefix: str) -> None:
    """A checkpoint stored as an append to a list blob whose base vanished (the thread pruned
    under the run): at "sync" it is stored whole at once; at "async" the graph call fails."""
    for durability in ("sync", "async"):
        ledger = Ledger.from_url(redis_url, prefix=f"{prefix}{durability}")
        saver = DurableCheckpointer(ledger)
        keys = thread_keys(ledger, "t")

        def inside(i: int, keys: Any = keys, ledger: Ledger = ledger) -> None:
            if i == 2:
                # At "async" LangGraph saves from a thread that may lag behind the nodes (CI,
                # under load: the base was written after this deletion, so nothing was lost):
                # the base must be in Redis before it vanishes.
                deadline = time.monotonic() + 10
                while not ledger.redis.exists(keys.blobs) and time.monotonic() < deadline:
                    time.sleep(0.01)
                ledger.redis.delete(keys.blobs, keys.all[4])  # blobs and chain

        graph = _linear(saver, 4, inside)
        try:
            config: Any = {"configurable": {"thread_id": "t"}}
            if durability == "sync":
                out = graph.invoke({"count": 0, "log": []}, config, durability=durability)
                assert out["log"] == ["n0", "n1", "n2", "n3"]
                got = saver.get_tuple(config)
                assert got is not None and got.checkpoint["channel_values"]["log"] == out["log"]
            else:
                with pytest.raises(LedgerError, match="was not saved"):
                    graph.invoke({"count": 0, "log": []}, config, durability=durability)
        finally:
            ledger.close()


# ---- SIGKILL at "async" -------------------------------------------------------------------
def _wait_gone(client: redis.Redis, addrs: set[str]) -> None:
    """Until Redis has freed the dead child's connections (read all it was going to read)."""
    deadline = time.monotonic() + 60
    while addrs & {c["addr"] for c in client.client_list()}:
        assert time.monotonic() < deadline, f"Redis still holds {addrs}"
        time.sleep(0.05)


def _applied(ledger: Ledger, name: str, what: str, steps: dict[str, str]) -> bool:
    keys = thread_keys(ledger, "pipelined")
    if name == "claim":
        return what in steps
    if name == "complete":
        return steps.get(what) == "completed"
    if name == "langgraph.put":
        return bool(ledger.redis.hexists(keys.cp, what))
    if name == "langgraph.put_writes":
        return bool(ledger.redis.hexists(keys.writes, what))
    raise AssertionError(f"unexpected record {name!r}")


@pytest.mark.slow
@pytest.mark.parametrize("kill_node", [1, 3, 5])
def test_a_sigkill_at_async_leaves_a_prefix(redis_url: str, prefix: str, kill_node: int) -> None:
    out = tmpdir("lg-pipelined-")
    first = run_child(CHILD, redis_url, prefix, str(out), "first", str(kill_node), str(NODES),
                      timeout=120)
    assert killed(first), first.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "sent").read_text().splitlines()]
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    try:
        _wait_gone(ledger.redis, {what for name, what in lines if name == "addr"})
        sent = [(name, what) for name, what in lines if name != "addr"]
        assert {"claim", "complete", "langgraph.put", "langgraph.put_writes"} <= {
            n for n, _ in sent}
        steps = {s.key: str(s.status) for s in ledger.steps("pipelined")}
        applied = [_applied(ledger, name, what, steps) for name, what in sent]
        # A prefix: nothing applied after the first record that was not.
        cut = applied.index(False) if False in applied else len(applied)
        assert not any(applied[cut:]), "\n".join(
            f"{int(a)} {n} {w!r}" for (n, w), a in zip(sent, applied, strict=True))
        completed = {k for k, status in steps.items() if status == "completed"}

        second = run_child(CHILD, redis_url, prefix, str(out), "resume", str(kill_node),
                           str(NODES), timeout=120)
        assert second.returncode == 0, second.stderr[-3000:]
        result = json.loads(second.stdout.splitlines()[-1])
        assert result["out"] == {"count": NODES, "log": [f"n{i}" for i in range(NODES)]}
        effects: dict[str, list[str]] = defaultdict(list)
        for line in (out / "effects").read_text().splitlines():
            i, key = line.split("|")
            effects[i].append(key)
        assert sorted(effects, key=int) == [str(i) for i in range(NODES)]
        for i, keys in effects.items():
            # The step of node i's effect: its key starts with the node's scope "n<i>.<step>".
            recorded = {k for k in steps if k.startswith(f"n{i}.")}
            if recorded & completed:
                assert len(keys) == 1, f"effect {i} was completed before the kill, ran again"
            else:  # lost with the suffix: once more at most, under the same key
                assert len(keys) <= 2 and len(set(keys)) == 1, (i, keys)
        run = ledger.get_run("pipelined")
        assert run is not None and run.status == RunStatus.COMPLETED
    finally:
        ledger.close()


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_an_invocations_waits(redis_url: str, prefix: str, durability: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted: the run's open carries the invocation's first read of the thread (one round
    trip); at "async"/"exit" the end is the only other wait (its barrier and the finish in one
    round trip); at "sync" each superstep's checkpoint is waited for, and the end then has
    nothing left to read but the finish."""
    waits = [0]
    send, read = (redis.connection.AbstractConnection.send_packed_command,
                  redis.connection.AbstractConnection.read_response)

    def counting_send(self: Any, *a: Any, **k: Any) -> Any:
        self._test_sent = True
        return send(self, *a, **k)

    def counting_read(self: Any, *a: Any, **k: Any) -> Any:
        if getattr(self, "_test_sent", False):
            self._test_sent = False
            waits[0] += 1
        return read(self, *a, **k)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                        counting_send)
    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", counting_read)
    # A long lease: the renewer (a third of it) never counts among the invocation's waits.
    ledger = Ledger.from_url(redis_url, prefix=prefix, lease_ms=600_000)
    graph = _linear(DurableCheckpointer(ledger), 4)
    config = {"configurable": {"thread_id": "w"}}
    try:
        graph.invoke({"count": 0, "log": []}, config, durability=durability)  # scripts loaded
        before = waits[0]
        out = graph.invoke({"count": 0, "log": []}, config, durability=durability)
        # The second invocation read the first's state (the open's read): the log goes on.
        assert out["log"] == ["n0", "n1", "n2", "n3"] * 2
        checkpoints = 6  # the input, the start, one per node (as the history above shows)
        assert waits[0] - before == (2 if durability != "sync" else 2 + checkpoints)
    finally:
        ledger.close()


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_a_thread_deleted_elsewhere_is_saved_anew(redis_url: str, prefix: str,
                                                  durability: str) -> None:
    """Another process deletes the thread (or it expires) between two invocations: this
    process's cache of the lists it stored must not make the next checkpoint a delta of a
    list that is gone."""
    ledger = Ledger.from_url(redis_url, prefix=prefix)
    other = DurableCheckpointer(Ledger.from_url(redis_url, prefix=prefix))
    graph = _linear(DurableCheckpointer(ledger), 3)
    config = {"configurable": {"thread_id": "gone"}}
    try:
        graph.invoke({"count": 0, "log": []}, config, durability=durability)
        other.delete_thread("gone")
        out = graph.invoke({"count": 0, "log": []}, config, durability=durability)
        assert out == {"count": 3, "log": ["n0", "n1", "n2"]}
        final = other.get_tuple(config)
        assert final is not None and final.checkpoint["channel_values"] == out
        run = ledger.get_run("gone")
        assert run is not None and run.status == RunStatus.COMPLETED
    finally:
        ledger.close()
        other.ledger.close()
