"""Where a result came from: the git revision and a hash of the source tree that computed it."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = (("harness", "*.py"), ("formats", "*.py"), ("codecs", "*.py"), ("experiments", "*.yaml"))


def git_revision() -> str:
    """HEAD's commit, with "-dirty" when tracked files outside results/ differ from it ("unknown" outside a
    git checkout). Committed results are outputs: a compare resumed in its committed directory appends
    to its log there, which does not change what computes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.cache
def source_hash() -> str:
    """12 hex digits over the code and configs that compute a point (harness, formats, codecs, experiments)."""
    h = hashlib.sha256()
    for folder, pattern in SOURCES:
        for path in sorted((REPO / folder).rglob(pattern)):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]
