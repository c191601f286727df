"""A LangGraph release that stops going through a call site the adapter wraps makes the adapter
fail loudly when it installs, instead of recording nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_moved_task_runner_fails_at_install(redis_url: str, prefix: str) -> None:
    code = textwrap.dedent(f"""
        import types
        import langgraph.pregel._runner as runner

        # Stand-in for a LangGraph release whose runner reaches run_with_retry by a path the
        # adapter does not wrap: the runner's methods keep their own copy of the module names.
        frozen = dict(runner.__dict__)
        for name in ("tick", "atick"):
            f = getattr(runner.PregelRunner, name)
            copy = types.FunctionType(f.__code__, frozen, f.__name__, f.__defaults__,
                                      f.__closure__)
            copy.__kwdefaults__ = f.__kwdefaults__
            setattr(runner.PregelRunner, name, copy)

        from agentledger import Ledger
        from agentledger.langgraph import DurableCheckpointer, _recording
        from agentledger.langgraph._seams import SeamMovedError

        try:
            DurableCheckpointer(Ledger.from_url({redis_url!r}, prefix={prefix!r}))
        except SeamMovedError as e:
            print("refused:", e)
        else:
            print("installed")
        print("wrappers left installed:", _recording.installed())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:") and "run_with_retry" in lines[0], done.stdout
    assert "arun_with_retry" in lines[0]
    assert lines[1] == "wrappers left installed: False"


def test_the_installed_langgraph_passes_the_self_check() -> None:
    from agentledger.langgraph import _recording, _seams

    _recording.install()
    assert _recording.installed()
    _seams.self_check()
