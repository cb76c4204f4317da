"""Provenance: the revision a result names is dirty for source edits, not for committed results."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bytegolf.run import provenance


def test_edits_under_results_leave_the_revision_clean_and_source_edits_mark_it_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    (tmp_path / "results" / "c").mkdir(parents=True)
    (tmp_path / "harness").mkdir()
    (tmp_path / "results" / "c" / "compare.log").write_text("a\n")
    (tmp_path / "harness" / "m.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = git("rev-parse", "HEAD").strip()
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.git_revision() == head
    (tmp_path / "results" / "c" / "compare.log").write_text("a\nresumed\n")
    (tmp_path / "notes.txt").write_text("untracked")
    assert provenance.git_revision() == head
    (tmp_path / "harness" / "m.py").write_text("x = 2\n")
    assert provenance.git_revision() == head + "-dirty"
