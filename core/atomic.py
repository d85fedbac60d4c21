"""Files that readers (or a later run) see whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` fills a file beside `path`, which then replaces `path` in one rename: a process killed
    mid-write leaves the previous file (or none), never half of one."""
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")  # the suffix kept: np.save adds none then
    write(partial)
    os.replace(partial, path)
