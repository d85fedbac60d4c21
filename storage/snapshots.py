"""Versioned index snapshots on disk and the atomic `CURRENT` pointer that says which one serves."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

CURRENT = "CURRENT"
META = "snapshot.json"


def new_snapshot_dir(root: Path, label: str) -> Path:
    """A fresh directory to build into; invisible to readers until `publish`."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path = root / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{int(now * 1000) % 1000:03d}-{label}"
    path.mkdir()
    return path


def publish(root: Path, snapshot_dir: Path, meta: dict) -> None:
    """Write the snapshot's metadata, then swap CURRENT with one atomic rename."""
    (snapshot_dir / META).write_text(json.dumps(meta, indent=2))
    tmp = root / f".{CURRENT}.{os.getpid()}"
    tmp.write_text(snapshot_dir.name)
    os.replace(tmp, root / CURRENT)


def current_snapshot(root: Path) -> Path | None:
    pointer = root / CURRENT
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / META).is_file() else None


def read_meta(snapshot_dir: Path) -> dict:
    return json.loads((snapshot_dir / META).read_text())


def prune(root: Path, keep: int = 3) -> list[Path]:
    """Delete all but the newest `keep` published snapshots; never the current one."""
    current = current_snapshot(root)
    published = sorted(p for p in root.iterdir() if p.is_dir() and (p / META).is_file())
    removed = [p for p in published[:-keep] if p != current] if keep else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
