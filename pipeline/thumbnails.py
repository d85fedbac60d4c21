"""Thumbnails of a video item's frames, written when it is encoded, so the inspector and any client can
see what the encoder saw: the media route serves them (`/v1/items/{id}/media/frame?n=`)."""

from __future__ import annotations

from mmrecall.core.settings import Settings
from mmrecall.encoders.frames import item_frames
from mmrecall.encoders.media import MediaError
from mmrecall.storage.db import Item
from mmrecall.storage.thumbnails import thumbnail_dir

THUMBNAIL_FRAMES = 8  # frames sampled over a video for its thumbnails (the encoder may use fewer)
THUMBNAIL_SIDE = 256  # longest side, pixels


def write_thumbnails(settings: Settings, item: Item, local: tuple[str | None, list[str] | None, str | None]) -> int:
    """Thumbnails of up to THUMBNAIL_FRAMES frames of a video or frame-list item (none for a cover-only
    item: its cover is served as it is); returns how many. `local`: (cover, frames, video) as local paths."""
    cover, frames, video = local
    if not video and not frames:
        return 0
    try:
        images = item_frames(cover=None, frames=frames, video=video, n=THUMBNAIL_FRAMES)
    except MediaError:
        return 0  # the encoder reports the item's media error; thumbnails are only a view of it
    directory = thumbnail_dir(settings, item.id)
    directory.mkdir(parents=True, exist_ok=True)
    for n, image in enumerate(images):
        small = image.copy()
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        small.convert("RGB").save(directory / f"{n}.jpg", "JPEG", quality=85)
    return len(images)
