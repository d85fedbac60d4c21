"""Where a video item's frame thumbnails live (written at encode time by mmrecall.pipeline.thumbnails,
served by the media route): under MMRECALL_HOME, named by a digest of the item id."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmrecall.core.settings import Settings


def thumbnail_dir(settings: Settings, item_id: str) -> Path:
    digest = hashlib.sha1(item_id.encode()).hexdigest()  # ids may hold any character: never a path
    return settings.thumbnails_dir / digest[:2] / digest


def thumbnail_path(settings: Settings, item_id: str, n: int) -> Path:
    return thumbnail_dir(settings, item_id) / f"{n}.jpg"
