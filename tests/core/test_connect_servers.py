"""The ledger on every kind of Redis deployment it accepts, sync and asyncio, each against real
servers of the test's own on loopback: a password-protected Redis Cluster given as a client, a
Sentinel and its master, TLS (plain and cluster), and a least-privilege ACL user."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

import agentledger
from _support import RedisServer, answers, free_cluster_port, free_port, redis_server_binary, tmpdir
from agentledger import Ledger, RunStatus, StepCall

PASSWORD = "cl0ud-Pa55"
SLOTS = 16384


@agentledger.step
def charge(n: int) -> int:
    return n * 10


@agentledger.step
async def acharge(n: int) -> int:
    return n * 10


def exercise_sync(ledger: Ledger, run_id: str) -> None:
    for _ in range(2):
        with ledger.run(run_id) as s:
            assert [charge(1), charge(2)] == [10, 20]
    assert s.replayed == 2
    run = ledger.get_run(run_id)
    assert run is not None and run.status == RunStatus.COMPLETED


async def exercise_async(ledger: Ledger, run_id: str) -> None:
    for _ in range(2):
        async with ledger.arun(run_id) as s:
            assert [await acharge(1), await acharge(2)] == [10, 20]
    assert s.replayed == 2
    run = await ledger.aget_run(run_id)
    assert run is not None and run.status == RunStatus.COMPLETED
    await ledger.aclose()


# ---- TLS material -------------------------------------------------------------------------------
@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path

    def server_args(self) -> list[str]:
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]


def make_tls(d: Path) -> Tls:
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=agentledger test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return Tls(d / "ca.crt", d / "server.crt", d / "server.key")


def tls_supported() -> bool:
    out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True)
    return shutil.which("openssl") is not None and "redis" in out.stdout.lower()


def wait_tls(port: int, tls: Tls) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port, ssl=True, ssl_ca_certs=str(tls.ca), password=PASSWORD,
                        socket_connect_timeout=0.5).ping()
            return
        except redis.RedisError:
            assert time.monotonic() < deadline, "the TLS redis-server did not start"
            time.sleep(0.05)


def start_tls_server(base: Path, tls: Tls, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    base.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--dir", str(base), "--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
         "--masterauth", PASSWORD, "--logfile", str(base / "redis.log"), *tls.server_args(),
         *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tls(port, tls)
    return proc


# ---- clusters -----------------------------------------------------------------------------------
def form_cluster(clients: list[redis.Redis], ports: list[int]) -> None:
    third = SLOTS // 3
    for i, c in enumerate(clients):
        lo, hi = i * third, SLOTS - 1 if i == 2 else (i + 1) * third - 1
        c.execute_command("CLUSTER ADDSLOTS", *range(lo, hi + 1))
    for p in ports[1:]:
        clients[0].execute_command("CLUSTER MEET", "127.0.0.1", p)
    deadline = time.monotonic() + 30
    while not all(c.execute_command("CLUSTER INFO").get("cluster_state") == "ok"
                  for c in clients):
        assert time.monotonic() < deadline, "the test cluster did not form"
        time.sleep(0.1)


@pytest.fixture
def password_cluster() -> Iterator[list[int]]:
    base = tmpdir("agentledger-pwcluster-")
    nodes = [RedisServer(base / str(i), appendonly=False, port=free_cluster_port(),
                         extra=["--cluster-enabled", "yes", "--requirepass", PASSWORD,
                                "--masterauth", PASSWORD,
                                "--cluster-config-file", str(base / str(i) / "nodes.conf")])
             for i in range(3)]
    try:
        for n in nodes:
            n.dir.mkdir(parents=True, exist_ok=True)
            n.start = _start_with_password(n)  # type: ignore[method-assign]
            n.start()
        form_cluster([redis.Redis(port=n.port, password=PASSWORD) for n in nodes],
                     [n.port for n in nodes])
        yield [n.port for n in nodes]
    finally:
        for n in nodes:
            n.kill()
        shutil.rmtree(base, ignore_errors=True)


def _start_with_password(server: RedisServer):  # type: ignore[no-untyped-def]
    def start() -> RedisServer:
        args = [redis_server_binary(), "--port", str(server.port), "--bind", "127.0.0.1",
                "--dir", str(server.dir), "--save", "", "--appendonly", "no",
                "--logfile", str(server.dir / "redis.log"), *server.extra]
        server.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not answers(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        return server
    return start


async def test_async_api_uses_the_given_cluster_clients_nodes_and_password(
        password_cluster: list[int], redis_url: str) -> None:
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", password_cluster[0])],
                          password=PASSWORD)
    ledger = Ledger(client, prefix="pc")
    await exercise_async(ledger, "order-1")
    # The records are on the cluster, not on whatever answers at localhost:6379.
    assert client.exists(ledger.keys("order-1").run) == 1
    shared = redis.Redis.from_url(redis_url)
    assert shared.exists(ledger.keys("order-1").run) == 0
    shared.close()
    exercise_sync(ledger, "order-2")
    client.close()


# ---- Sentinel ---------------------------------------------------------------------------------
@pytest.fixture
def sentinel() -> Iterator[tuple[int, RedisServer]]:
    base = tmpdir("agentledger-sentinel-")
    master = RedisServer(base / "master", appendonly=False,
                         extra=["--requirepass", PASSWORD, "--masterauth", PASSWORD])
    master.dir.mkdir(parents=True, exist_ok=True)
    master.start = _start_with_password(master)  # type: ignore[method-assign]
    master.start()
    port = free_port()
    conf = base / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {base}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                    f"sentinel auth-pass mymaster {PASSWORD}\n")
    proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel", "--logfile",
                             str(base / "sentinel.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                s = redis.Redis(port=port, socket_connect_timeout=0.5)
                if s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"):
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the sentinel did not start"
            time.sleep(0.05)
        yield port, master
    finally:
        proc.kill()
        proc.wait(10)
        master.kill()
        shutil.rmtree(base, ignore_errors=True)


def test_a_sentinel_url_sync(sentinel: tuple[int, RedisServer]) -> None:
    port, master = sentinel
    ledger = Ledger.from_url(f"redis+sentinel://:{PASSWORD}@127.0.0.1:{port}/mymaster",
                             prefix="st")
    exercise_sync(ledger, "r")
    direct = redis.Redis(port=master.port, password=PASSWORD)
    assert direct.exists(ledger.keys("r").run) == 1
    direct.close()
    ledger.close()


async def test_a_sentinel_url_and_a_sentinel_client_async(
        sentinel: tuple[int, RedisServer]) -> None:
    port, master = sentinel
    ledger = Ledger.from_url(f"redis+sentinel://:{PASSWORD}@127.0.0.1:{port}/mymaster/0",
                             prefix="st")
    await exercise_async(ledger, "a")
    ledger.close()
    client = Sentinel([("127.0.0.1", port)]).master_for("mymaster", password=PASSWORD)
    given = Ledger(client, prefix="st")
    await exercise_async(given, "b")
    direct = redis.Redis(port=master.port, password=PASSWORD)
    assert direct.exists(given.keys("a").run) == 1 and direct.exists(given.keys("b").run) == 1
    direct.close()


# ---- TLS --------------------------------------------------------------------------------------
@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Tls]]:
    if not tls_supported():
        pytest.fail("TLS needs openssl and a redis-server built with TLS")
    tls = make_tls(tmp_path / "tls")
    port = free_port()
    proc = start_tls_server(tmp_path / "srv", tls, port, [])
    try:
        yield port, tls
    finally:
        proc.kill()
        proc.wait(10)


async def test_tls_sync_and_async_from_a_url_and_from_a_client(
        tls_server: tuple[int, Tls]) -> None:
    port, tls = tls_server
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={tls.ca}"
    ledger = Ledger.from_url(url, prefix="tls")
    exercise_sync(ledger, "s")
    await exercise_async(ledger, "a")
    ledger.close()
    client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(tls.ca), password=PASSWORD)
    given = Ledger(client, prefix="tls")
    await exercise_async(given, "b")
    client.close()


def test_tls_with_an_unknown_ca_is_refused(tls_server: tuple[int, Tls]) -> None:
    port, _tls = tls_server
    ledger = Ledger.from_url(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0")  # system CAs only
    with pytest.raises(agentledger.LedgerUnavailableError) as caught:
        ledger.open_run("r")
    assert PASSWORD not in str(caught.value)
    ledger.close()


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[list[int], Tls]]:
    if not tls_supported():
        pytest.fail("TLS needs openssl and a redis-server built with TLS")
    tls = make_tls(tmp_path / "tls")
    ports = [free_cluster_port() for _ in range(3)]
    procs = []
    try:
        for i, p in enumerate(ports):
            procs.append(start_tls_server(
                tmp_path / str(i), tls, p,
                ["--cluster-enabled", "yes", "--tls-cluster", "yes", "--tls-replication", "yes",
                 "--cluster-config-file", str(tmp_path / str(i) / "nodes.conf")]))
        form_cluster([redis.Redis(port=p, ssl=True, ssl_ca_certs=str(tls.ca), password=PASSWORD)
                      for p in ports], ports)
        yield ports, tls
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


async def test_a_tls_cluster_url_sync_and_async(tls_cluster: tuple[list[int], Tls]) -> None:
    ports, tls = tls_cluster
    ledger = Ledger.from_url(
        f"rediss+cluster://:{PASSWORD}@127.0.0.1:{ports[0]}?ssl_ca_certs={tls.ca}", prefix="tc")
    assert ledger.cluster
    exercise_sync(ledger, "s")
    await exercise_async(ledger, "a")
    ledger.close()


# ---- a least-privilege ACL user ---------------------------------------------------------------
# The ACL docs/architecture.md documents for the core ledger (keep the two in step).
LEDGER_ACL = ("resetkeys ~{prefix}:* resetchannels -@all +ping +select "
              "+evalsha +script|load +time +hget +hset +hgetall +hincrby +persist +pexpire "
              "+pttl +del +exists +get +set +sadd +srem +smembers +zadd +zrange +zrevrange "
              "+zrem +config|get")


async def test_a_least_privilege_acl_user_can_do_everything_the_ledger_does(
        own_redis: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    from agentledger._cli import main

    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", "ledger", "on", f">{PASSWORD}",
                          *LEDGER_ACL.format(prefix="acl").split())
    admin.script_flush()  # the user's own connection loads every script (SCRIPT LOAD)
    url = f"redis://ledger:{PASSWORD}@127.0.0.1:{own_redis.port}/0"
    ledger = Ledger.from_url(url, prefix="acl")
    exercise_sync(ledger, "s")
    await exercise_async(ledger, "a")
    with pytest.raises(agentledger.ApprovalPending), ledger.run("w"):
        agentledger.approval("ship", {"n": 1})
    assert [p.key for p in ledger.pending_approvals()] == ["approval:ship#1"]
    ledger.decide("w", by="ann")
    with ledger.run("w"):
        assert agentledger.approval("ship", {"n": 1}).by == "ann"
    assert {r.run_id for r in ledger.list_runs()} == {"s", "a", "w"}
    assert ledger.delete_run("s") >= 2 and ledger.gc() == 0
    assert main(["show", "w", "--url", url, "--prefix", "acl"]) == 0
    assert "ship" in capsys.readouterr().out
    # Outside its prefix the user can do nothing.
    with pytest.raises(agentledger.RedisAuthError):
        Ledger.from_url(url, prefix="other").open_run("r")
    ledger.close()
    admin.close()


async def test_durability_async_as_a_least_privilege_acl_user(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """With the documented extras, records go with replies off; without them, the ledger warns
    and acknowledges each record at once, as at 'sync' (a denied CLIENT REPLY never leaves a
    record's fate unknown)."""
    admin = redis.Redis.from_url(own_redis.url)
    extras = "+eval +hmget +client|reply +client|setname +client|list"
    for user, acl in (("fast", f"{LEDGER_ACL} {extras}"), ("plain", LEDGER_ACL)):
        admin.execute_command("ACL", "SETUSER", user, "on", f">{PASSWORD}",
                              *acl.format(prefix=user).split())
        url = f"redis://{user}:{PASSWORD}@127.0.0.1:{own_redis.port}/0"
        ledger = Ledger.from_url(url, prefix=user, durability="async")
        caplog.clear()
        with ledger.run("r") as session:
            for i in range(3):
                session.call(StepCall(kind="llm", name="chat", inputs=i, intent=False), lambda i=i: i)
            unacknowledged = session._hot.unacknowledged
        assert ledger._replies_off is (user == "fast")
        assert unacknowledged == (3 if user == "fast" else 0)
        assert ("acknowledged one by one" in caplog.text) is (user == "plain")
        assert [s.status for s in ledger.steps("r")] == ["completed"] * 3
        ledger.close()
    admin.close()
