"""Connecting goes wrong in ways a user can fix: each is a clear LedgerError, at once, with no
password in it; a hung Redis fails a step closed before the run's lease runs out; an evicting
Redis is refused. Every test uses redis-server processes of its own on loopback ports."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import agentledger
from _support import RedisServer, free_port, tmpdir
from agentledger import (
    Ledger,
    LedgerError,
    LedgerUnavailableError,
    RedisAuthError,
    RedisConfigError,
)

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    extra = getattr(request, "param", [])
    d = tmpdir()
    s = RedisServer(d, appendonly=False, extra=list(extra))
    s.start()
    try:
        yield s
    finally:
        if s.proc is not None:
            s.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        s.kill()
        shutil.rmtree(d, ignore_errors=True)


def with_password(server: RedisServer) -> RedisServer:
    redis.Redis(port=server.port).config_set("requirepass", PASSWORD)
    return server


def connections_received(server: RedisServer) -> int:
    c = redis.Redis(port=server.port, password=PASSWORD)
    try:
        return int(c.info("stats")["total_connections_received"])
    finally:
        c.close()


@agentledger.step
def effect(n: int) -> int:
    return n


def test_a_wrong_password_is_an_auth_error_at_once_never_retried(server: RedisServer) -> None:
    with_password(server)
    before = connections_received(server)
    ledger = Ledger.from_url(f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0")
    with pytest.raises(RedisAuthError) as caught, ledger.run("r"):
        effect(1)
    message = str(caught.value)
    assert "authentication failed" in message and "\n" not in message
    assert PASSWORD not in message and "***" in message
    # One connection attempt (ours) plus the one that reads the count: no retries.
    assert connections_received(server) - before == 2
    ledger.close()


def test_a_missing_password_is_an_auth_error(server: RedisServer) -> None:
    with_password(server)
    ledger = Ledger.from_url(server.url)
    with pytest.raises(RedisAuthError):
        ledger.open_run("r")
    ledger.close()


@pytest.mark.timeout(60)
def test_a_stopped_redis_fails_the_step_closed_before_the_lease_runs_out(
        server: RedisServer) -> None:
    ledger = Ledger.from_url(server.url)  # the default lease (15 s) and timeouts
    ran: list[int] = []

    @agentledger.step
    def charge(n: int) -> int:
        ran.append(n)
        return n

    with pytest.raises(LedgerUnavailableError), ledger.run("r") as session:
        charge(1)
        lease_until = ledger.get_run("r").lease_until  # type: ignore[union-attr]
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)  # hung: the port accepts, nothing answers
        try:
            charge(2)
        finally:
            failed_at = int(time.time() * 1000)
            server.proc.send_signal(signal.SIGCONT)
    # It failed closed (the body never ran) while this process still held the lease, so no
    # other process could have taken the run over meanwhile.
    assert ran == [1]
    assert failed_at < lease_until
    assert session.fenced is False
    ledger.close()


@pytest.mark.timeout(60)
def test_the_cli_does_not_hang_on_a_stopped_redis(server: RedisServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from agentledger._cli import main

    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        assert main(["--url", server.url, "runs"]) == 1
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert "unreachable" in capsys.readouterr().err


def test_timeouts_are_overridable() -> None:
    ledger = Ledger.from_url("redis://127.0.0.1:1/0", connect_timeout_s=0.25,
                             socket_timeout_s=0.75)
    kwargs = ledger.redis.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.25, 0.75)
    assert kwargs["socket_keepalive"] is True
    default = Ledger.from_url("redis://127.0.0.1:1/0", lease_ms=15_000)
    assert default.redis.connection_pool.connection_kwargs["socket_timeout"] == 1.5
    ledger.close()
    default.close()


@pytest.mark.timeout(60)
def test_rediss_to_a_plain_port_is_a_config_error_not_a_hang(server: RedisServer) -> None:
    ledger = Ledger.from_url(f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0")
    with pytest.raises(RedisConfigError) as caught:
        ledger.open_run("r")
    assert "speaks plain Redis" in str(caught.value) and PASSWORD not in str(caught.value)
    ledger.close()


def test_a_database_index_out_of_range_is_a_config_error(server: RedisServer) -> None:
    ledger = Ledger.from_url(f"redis://127.0.0.1:{server.port}/99")
    with pytest.raises(RedisConfigError, match="no such database"):
        ledger.open_run("r")
    ledger.close()


def test_a_cluster_url_to_a_plain_node_or_a_dead_one(server: RedisServer) -> None:
    with_password(server)
    with pytest.raises(RedisConfigError, match="not in cluster mode"):
        Ledger.from_url(f"redis+cluster://:{PASSWORD}@127.0.0.1:{server.port}")
    with pytest.raises(LedgerUnavailableError) as caught:
        Ledger.from_url(f"redis+cluster://:{PASSWORD}@127.0.0.1:{free_port()}")
    assert PASSWORD not in str(caught.value)


def test_a_bad_url_never_prints_its_password() -> None:
    for url in (f"redis://:{PASSWORD}@127.0.0.1:notaport/0",
                f"redis://user:{PASSWORD}@127.0.0.1:6379/0?bogus_option=1",
                f"postgres://u:{PASSWORD}@host/db",
                f"redis+sentinel://:{PASSWORD}@127.0.0.1:1"):
        with pytest.raises((LedgerError, ValueError)) as caught:
            Ledger.from_url(url).open_run("r")
        assert PASSWORD not in str(caught.value), url


@pytest.mark.parametrize("server", [["--maxmemory", "50mb", "--maxmemory-policy", "allkeys-lru"]],
                         indirect=True)
def test_an_evicting_redis_is_refused_unless_allowed(server: RedisServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger.from_url(server.url)
    with pytest.raises(RedisConfigError) as caught:
        ledger.open_run("r")
    assert "allkeys-lru" in str(caught.value) and "noeviction" in str(caught.value)
    assert ledger.list_runs() == []  # refused before anything was written
    ledger.close()
    risky = Ledger.from_url(server.url, allow_evicting_redis=True)
    with caplog.at_level(logging.WARNING, "agentledger"), risky.run("r"):
        assert effect(3) == 3
    assert "allkeys-lru" in caplog.text
    risky.close()


@pytest.mark.parametrize("server", [["--maxmemory-policy", "volatile-lru"]], indirect=True)
def test_a_volatile_policy_is_a_warning(server: RedisServer,
                                        caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger.from_url(server.url)
    with caplog.at_level(logging.WARNING, "agentledger"), ledger.run("r"):
        effect(1)
    assert "volatile-lru" in caplog.text
    ledger.close()


@pytest.mark.parametrize("server", [["--maxmemory-policy", "allkeys-lru"]], indirect=True)
async def test_the_async_api_checks_the_policy_too(server: RedisServer) -> None:
    ledger = Ledger.from_url(server.url)
    with pytest.raises(RedisConfigError):
        await ledger.aopen_run("r")
    ledger.close()


def test_a_user_without_config_get_is_warned_not_refused(server: RedisServer,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "SETUSER", "app", "on", f">{PASSWORD}", "~*", "+@all",
                          "-config")
    ledger = Ledger.from_url(f"redis://app:{PASSWORD}@127.0.0.1:{server.port}/0")
    with caplog.at_level(logging.WARNING, "agentledger"), ledger.run("r"):
        effect(1)
    assert "could not read maxmemory-policy" in caplog.text
    assert PASSWORD not in caplog.text
    ledger.close()
    admin.close()


def test_unix_socket_urls_still_work(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    s = RedisServer(tmp_path / "d", appendonly=False, extra=["--unixsocket", str(sock)]).start()
    try:
        ledger = Ledger.from_url(f"unix://{sock}")
        with ledger.run("r"):
            assert effect(5) == 5
        ledger.close()
    finally:
        s.kill()


def test_keepalive_is_on_for_tcp() -> None:
    ledger = Ledger.from_url("redis://127.0.0.1:1/0")
    opts = ledger.redis.connection_pool.connection_kwargs["socket_keepalive_options"]
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert opts[socket.TCP_KEEPIDLE] >= 1
    ledger.close()


def test_the_cli_reads_the_url_from_a_file_or_the_environment_and_never_prints_a_password(
        server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agentledger._cli import main

    with_password(server)
    good = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    url_file = tmp_path / "url"
    url_file.write_text(good + "\n")
    assert main(["runs", "--url-file", str(url_file), "--prefix", "p"]) == 0
    monkeypatch.setenv("AGENTLEDGER_URL", good)
    assert main(["runs", "--prefix", "p"]) == 0
    url_file.write_text(good.replace(PASSWORD, "not-" + PASSWORD) + "\n")
    assert main(["runs", "--url-file", str(url_file)]) != 0
    bad_port = good.replace(str(server.port), "notaport")
    assert main(["runs", "--url", bad_port]) != 0
    out = capsys.readouterr()
    assert "authentication failed" in out.err
    assert PASSWORD not in out.out + out.err


def test_a_given_client_without_a_socket_timeout_is_warned_about(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "agentledger"):
        Ledger(redis.Redis(port=server.port), prefix="p")
        Ledger(redis.Redis(port=server.port, socket_timeout=2), prefix="p")
    assert caplog.text.count("no socket_timeout") == 1


@pytest.mark.timeout(60)
def test_the_console_answers_an_error_when_redis_is_stopped(server: RedisServer) -> None:
    from _console import Console, http

    with_password(server)
    ledger = Ledger.from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", redis_retries=2)
    assert server.proc is not None
    with Console(ledger) as console:
        server.proc.send_signal(signal.SIGSTOP)
        try:
            code, body = http(console.url + "/api/counts", timeout=50)
        finally:
            server.proc.send_signal(signal.SIGCONT)
    assert code == 500 and "unreachable" in body and PASSWORD not in body
    ledger.close()
