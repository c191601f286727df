"""``import agentledger.crewai`` refuses a CrewAI older than the floor, saying why."""

from __future__ import annotations

from pathlib import Path

from _support import run_child


def test_an_old_crewai_is_refused_at_import(tmp_path: Path) -> None:
    # An installed-package record that says crewai 1.15.28, found before the real one.
    info = tmp_path / "crewai-1.15.28.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crewai\nVersion: 1.15.28\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "try:\n    import agentledger.crewai\n"
            "except ImportError as e:\n    print(e)\nelse:\n    print('imported')\n")
    proc = run_child(code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == (
        "agentledger.crewai needs crewai>=1.15.29, found 1.15.28: older versions carry on past "
        "a stopped tool call as if it had failed, so tool approvals and the in-doubt 'fail' "
        "policy would be ignored. pip install -U 'agentledger[crewai]'")


def test_the_installed_crewai_is_accepted() -> None:
    proc = run_child("import agentledger.crewai; print('imported')")
    assert proc.stdout.strip() == "imported", proc.stderr[-2000:]
