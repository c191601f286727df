"""examples/crewai_crash_resume.py runs with one command: killed mid-writer, resumed, and each
email sent once (fresh processes, the embedded Redis in a directory of the test's own)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _support import OFFLINE_ENV, REPO, tmpdir

EXAMPLE = REPO / "examples" / "crewai_crash_resume.py"


@pytest.mark.slow
def test_example_kills_mid_writer_and_sends_each_email_once() -> None:
    work = tmpdir("al-crew-example-")
    env = {"PATH": "/usr/bin:/bin", **OFFLINE_ENV, "CREWAI_STORAGE_DIR": str(work / "crewai")}
    try:
        proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=str(work), env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "exit status -9" in out  # the first process really died by SIGKILL
        assert "Warning" not in proc.stderr, proc.stderr[-3000:]
        assert "each email sent once" in out
        assert "task1:writer/tool:send_email" in out
        assert "recorded by the first process, not run again" in out
        assert "executed by the second process" in out
        emails = [json.loads(line) for line in
                  (Path(work) / ".agentledger" / "crewai-outbox.jsonl").read_text().splitlines()]
        assert sorted(e["to"] for e in emails) == ["press@example.com", "team@example.com"]
        # The example records under the default prefix, so `agentledger runs` lists it.
        run_id = out.split("run ", 1)[1].split(":", 1)[0]
        listed = subprocess.run([sys.executable, "-m", "agentledger._cli", "runs", "--json"],
                                cwd=str(work), env=env, capture_output=True, text=True, timeout=60)
        assert run_id in [r["run_id"] for r in json.loads(listed.stdout)], listed.stderr
    finally:
        subprocess.run([sys.executable, "-m", "agentledger._cli", "server", "stop"],
                       cwd=str(work), env=env, capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
