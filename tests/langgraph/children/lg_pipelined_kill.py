"""A graph at ``durability="async"`` whose checkpoint writes and step records all go without
waiting, SIGKILLed inside a node; then restarted (test_lg_pipelined_writes.py).

    lg_pipelined_kill.py REDIS_URL PREFIX OUT_DIR first|resume KILL_NODE NODES

Six nodes in a line; node i runs the recorded step ``effect(i)``, which appends
``i|idempotency key`` to OUT_DIR/effects. In the ``first`` phase the process SIGKILLs itself
right after node KILL_NODE's step returned (nothing was acknowledged since the run's first
read). Every record the run's step connection sends or calls is logged, in order and before it
is written, to OUT_DIR/sent (``name|what identifies it`` as JSON lines), so the test can tell
which of them Redis applied. ``resume`` asks ``thread_progress`` and continues the thread.
"""

from __future__ import annotations

import json
import operator
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

import agentledger
from agentledger import Ledger
from agentledger._hotpath import StepConnection
from agentledger.langgraph import DurableCheckpointer, thread_progress

URL, PREFIX, OUT, PHASE, KILL_NODE, NODES = (sys.argv[1], sys.argv[2], Path(sys.argv[3]),
                                              sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
THREAD = "pipelined"
_log = os.open(OUT / "sent", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _what(name: str, args: list[Any]) -> str:
    if name in ("claim", "complete"):
        return str(args[0])  # the step key
    if name in ("langgraph.put", "langgraph.put_writes"):
        return str(args[1])  # the checkpoint member, or the first write's field
    return ""


# Held across logging a record and sending it, so that the log's order is the order the
# records reached the connection (LangGraph saves checkpoints from its own threads).
_order = threading.RLock()


def _logged(method: Any) -> Any:
    # Test instrumentation only: Redis and the connection are the real ones.
    def logged(self: StepConnection, name: str, keys: list[str], args: list[Any],
               *rest: Any, **kw: Any) -> Any:
        with _order:
            if name != "langgraph.load":
                os.write(_log, (json.dumps([name, _what(name, args)]) + "\n").encode())
            return method(self, name, keys, args, *rest, **kw)

    return logged


def _addressed(method: Any) -> Any:
    def addressed(self: StepConnection, *args: Any, **kw: Any) -> Any:
        try:
            return method(self, *args, **kw)
        finally:
            sock = getattr(self._conn, "_sock", None)
            if sock is not None:  # where Redis sees this connection (CLIENT LIST addr)
                host, port = sock.getsockname()[:2]
                os.write(_log, (json.dumps(["addr", f"{host}:{port}"]) + "\n").encode())

    return addressed


StepConnection.send = _logged(_addressed(StepConnection.send))  # type: ignore[method-assign]
StepConnection.call = _logged(_addressed(StepConnection.call))  # type: ignore[method-assign]


@agentledger.step
def effect(i: int) -> int:
    with open(OUT / "effects", "a") as f:
        f.write(f"{i}|{agentledger.current_idempotency_key()}\n")
    return i


class State(TypedDict):
    count: int
    log: Annotated[list[str], operator.add]


def node(i: int) -> Any:
    def run(state: State) -> dict[str, Any]:
        effect(i)
        if PHASE == "first" and i == KILL_NODE:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"count": state["count"] + 1, "log": [f"n{i}"]}
    return run


def main() -> None:
    ledger = Ledger.from_url(URL, prefix=PREFIX, lease_ms=2000)
    b = StateGraph(State)
    prev = START
    for i in range(NODES):
        b.add_node(f"n{i}", node(i))
        b.add_edge(prev, f"n{i}")
        prev = f"n{i}"
    b.add_edge(prev, END)
    graph = b.compile(checkpointer=DurableCheckpointer(ledger))
    config: Any = {"configurable": {"thread_id": THREAD}}
    progress = thread_progress(graph, config)
    start = {"count": 0, "log": []} if progress.status == "new" else None
    out = graph.invoke(start, config, durability="async")
    print(json.dumps({"out": out, "progress": str(progress.status)}))
    ledger.close()


if __name__ == "__main__":
    main()
