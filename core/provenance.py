"""What a results file records about the code and the moment it was made: commit and date."""

from __future__ import annotations

import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def code_commit() -> str:
    """The git commit of the checkout this package runs from (with `+dirty` for uncommitted changes), or the
    installed version when it runs from a wheel."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return f"mmrecall {version('mmrecall')}"
    except PackageNotFoundError:
        return "unknown"


def provenance() -> dict[str, str]:
    """{"commit", "date"}: the first keys of every results JSON."""
    return {"commit": code_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
