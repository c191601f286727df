"""A Redis Cluster of the test's own: 3 masters and 3 replicas on free loopback ports
(``redis-server --cluster-enabled yes``), stopped by pid."""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from _support import RedisServer, free_cluster_port

SLOTS = 16384


@dataclass
class Cluster:
    base: Path
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        live = [n for n in self.nodes if n.proc is not None]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in live[:1])

    def start(self, masters: int = 3, node_timeout_ms: int = 1000,
              appendfsync: str = "everysec") -> Cluster:
        for i in range(masters * 2):
            d = self.base / str(i)
            node = RedisServer(d, appendonly=True, appendfsync=appendfsync,
                               port=free_cluster_port(),
                               extra=["--cluster-enabled", "yes",
                                      "--cluster-config-file", str(d / "nodes.conf"),
                                      "--cluster-node-timeout", str(node_timeout_ms),
                                      "--repl-diskless-sync-delay", "0"])
            self.nodes.append(node.start())
        # What `redis-cli --cluster create --cluster-replicas 1` does, by hand (CI may lack
        # redis-cli): slots in three ranges to the masters, everyone meets, replicas follow.
        clients = [self._client(n) for n in self.nodes]
        third = SLOTS // masters
        for i in range(masters):
            lo, hi = i * third, SLOTS - 1 if i == masters - 1 else (i + 1) * third - 1
            clients[i].execute_command("CLUSTER ADDSLOTS", *range(lo, hi + 1))
        for n in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", n.port)
        ids = [c.execute_command("CLUSTER MYID") for c in clients]
        deadline = time.monotonic() + 30
        for i in range(masters):
            while True:  # a replica can follow a master only once it knows it
                try:
                    clients[masters + i].execute_command("CLUSTER REPLICATE", ids[i])
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        self.wait_ok()
        return self

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=2)

    def wait_ok(self, timeout: float = 60) -> None:
        """Until every live node says the cluster is ok and knows three masters with slots."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                live = [n for n in self.nodes if n.proc is not None]
                if (all(self._client(n).execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                        for n in live) and len(self.masters()) == 3
                        and all(self._client(n).info("replication").get("master_link_status",
                                                                          "up") == "up"
                                for n in live)):
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster is not ok")
            time.sleep(0.1)

    def roles(self) -> dict[int, str]:
        """port -> 'master' | 'slave', as the live nodes see themselves."""
        out = {}
        for n in self.nodes:
            if n.proc is None:
                continue
            role = self._client(n).execute_command("ROLE")[0]
            out[n.port] = role.decode() if isinstance(role, bytes) else str(role)
        return out

    def masters(self) -> list[RedisServer]:
        roles = self.roles()
        return [n for n in self.nodes if roles.get(n.port) == "master"
                and self._client(n).execute_command("CLUSTER INFO")["cluster_slots_assigned"]]

    def node_of(self, key: str) -> RedisServer:
        """The master serving ``key``'s slot now."""
        slot = int(self._client(self.masters()[0]).execute_command("CLUSTER KEYSLOT", key))
        for n in self.masters():
            for lo, hi, *_ in self._client(n).execute_command("CLUSTER SLOTS"):
                if lo <= slot <= hi:
                    master_port = _[0][1]
                    return next(x for x in self.nodes if x.port == master_port)
        raise RuntimeError(f"no master serves {key!r}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The live replica following ``master``."""
        info = self._client(master).info("replication")
        ports = {int(v["port"]) for k, v in info.items() if k.startswith("slave")
                 and isinstance(v, dict)}
        return next(n for n in self.nodes if n.port in ports and n.proc is not None)

    def take_over(self, replica: RedisServer) -> None:
        """Promote ``replica`` now (its master was killed): CLUSTER FAILOVER TAKEOVER needs no
        vote, so the failover does not wait for the node timeout; until the replica is master."""
        self._client(replica).execute_command("CLUSTER FAILOVER", "TAKEOVER")
        deadline = time.monotonic() + 30
        while self.roles().get(replica.port) != "master":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not take over")
            time.sleep(0.05)

    def rejoin(self, node: RedisServer) -> None:
        """Start a killed master again as a replica of the master that replaced it; until it
        is in sync. It comes back as a fresh node (its nodes.conf and data dropped, its old id
        forgotten): restarted with its own nodes.conf it may win its slots back (seen in CI: a
        configEpoch collision with the replica's TAKEOVER, resolved for the node with the
        smaller id), and the cluster would go back to its data."""
        old_id = self._id_in_conf(node)
        for f in node.dir.iterdir():
            if f.name != "redis.log":
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        node.start()
        client = self._client(node)
        for other in self.nodes:
            if other is not node and other.proc is not None:
                client.execute_command("CLUSTER MEET", "127.0.0.1", other.port)
        for n in self.nodes:
            if n.proc is not None and old_id:
                with contextlib.suppress(redis.RedisError):
                    self._client(n).execute_command("CLUSTER FORGET", old_id)
        started = time.monotonic()
        deadline, nudged, joined_again = started + 90, 0.0, False
        while True:
            try:
                info = self._client(node).info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    return
                now = time.monotonic()
                if not joined_again and now > started + 30 and self._owns_no_slots(node):
                    # Still not (seen twice in CI, cause not found): say what the nodes saw,
                    # then join it again from scratch. Its data is ours to drop: a replica's
                    # full sync replaces it anyway.
                    warnings.warn("a restarted cluster node did not rejoin in 30 s; "
                                  "joining it again\n" + self._diagnosis(node), stacklevel=2)
                    joined_again = True
                    self._forget_the_cluster(node)
                if now > nudged + 1:
                    # Make it follow the master left with no replica, the one that took its
                    # place; again every second until it does (it must know that node first).
                    nudged = now
                    self._follow_the_orphan(node)
            except (redis.RedisError, OSError):
                pass  # a node busy or restarting: the next turn tries again
            if time.monotonic() > deadline:
                raise RuntimeError("the restarted node did not rejoin as a replica\n"
                                   + self._diagnosis(node))
            time.sleep(0.1)

    @staticmethod
    def _id_in_conf(node: RedisServer) -> str:
        conf = node.dir / "nodes.conf"
        if not conf.exists():
            return ""
        for line in conf.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and "myself" in parts[2]:
                return parts[0]
        return ""

    def _view(self, node: RedisServer) -> dict[str, dict[str, Any]]:
        """The cluster as a live node other than ``node`` sees it: node id -> its entry."""
        peer = next(n for n in self.nodes if n is not node and n.proc is not None)
        nodes = self._client(peer).execute_command("CLUSTER NODES")
        return {entry["node_id"]: entry for entry in nodes.values()}

    def _owns_no_slots(self, node: RedisServer) -> bool:
        """Whether the rest of the cluster sees no slot served by ``node`` (so emptying it
        loses no shard)."""
        me = self._client(node).execute_command("CLUSTER MYID")
        me = me.decode() if isinstance(me, bytes) else me
        return not self._view(node).get(me, {}).get("slots")

    def _follow_the_orphan(self, node: RedisServer) -> None:
        """Make ``node`` replicate the one master that, in the cluster's view, has slots and
        no replica besides ``node``; nothing if there is not exactly one."""
        me = self._client(node).execute_command("CLUSTER MYID")
        me = me.decode() if isinstance(me, bytes) else me
        view = self._view(node)
        masters = [i for i, e in view.items() if "master" in e["flags"] and e["slots"]
                   and "fail" not in e["flags"] and i != me]
        followed = {e["master_id"] for i, e in view.items() if "slave" in e["flags"]
                    and "fail" not in e["flags"] and i != me}
        orphans = [m for m in masters if m not in followed]
        if len(orphans) == 1:
            self._client(node).execute_command("CLUSTER REPLICATE", orphans[0])

    def _forget_the_cluster(self, node: RedisServer) -> None:
        """Empty the node, make it forget the cluster (it keeps its id; a replica's reset
        empties it) and meet the others again; the caller then makes it follow a master."""
        client = self._client(node)
        if client.execute_command("ROLE")[0] in (b"master", "master"):
            client.execute_command("FLUSHALL")  # our own node: CLUSTER RESET needs it empty
        client.execute_command("CLUSTER RESET", "SOFT")
        for other in self.nodes:
            if other is not node and other.proc is not None:
                client.execute_command("CLUSTER MEET", "127.0.0.1", other.port)

    def _diagnosis(self, node: RedisServer) -> str:
        """What the node and the others say, and the node's log: why a rejoin stalled."""
        parts = []
        for n in [node, *(m for m in self.nodes if m is not node and m.proc is not None)]:
            try:
                c = self._client(n)
                parts.append(f"--- {n.port} ROLE {c.execute_command('ROLE')!r}\n"
                             f"{c.execute_command('CLUSTER NODES')}")
            except (redis.RedisError, OSError) as exc:
                parts.append(f"--- {n.port}: {exc!r}")
        log = node.dir / "redis.log"
        if log.exists():
            parts.append("--- log\n" + "\n".join(log.read_text(errors="replace")
                                                   .splitlines()[-40:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()
