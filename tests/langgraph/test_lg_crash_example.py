"""The README's first command: examples/langgraph_crash_resume.py, on the embedded Redis, from
an empty directory, twice (it cleans up its own demo thread)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from _support import OFFLINE_ENV, REPO, tmpdir
from agentledger._embedded import stop_embedded

EXAMPLE = REPO / "examples" / "langgraph_crash_resume.py"


@pytest.mark.slow
def test_lg_crash_example_sends_each_email_once() -> None:
    home = tmpdir("lg-example-")
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTLEDGER_URL", "AGENTLEDGER_HOME")}
    env.update(OFFLINE_ENV)
    try:
        for _ in range(2):
            proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=home, env=env,
                                  capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            out = proc.stdout
            assert "process 1 ended: killed by SIGKILL" in out
            assert "process 2 ended: completed" in out
            outbox = (home / ".agentledger" / "outbox.txt").read_text().splitlines()
            assert [line.split()[0] for line in outbox] == [
                "to=ann@example.com", "to=bob@example.com", "to=carol@example.com"]
            assert "writer.2/tool:send_email@3         process 1 died inside it" in out
            assert out.count("done by process 1, not run again") == 4
            # Process 2 sent only the third email and asked only the editor.
            second = out.split("process 2:", 1)[1].split("every call", 1)[0]
            assert second.count("sent email") == 1 and second.count("model answered") == 1
    finally:
        stop_embedded(home / ".agentledger")
        shutil.rmtree(home, ignore_errors=True)
