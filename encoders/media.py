"""An item's content with its media decoded, as every encoder takes it (`ContentInput`)."""

from __future__ import annotations

from mmrecall.encoders.base import ContentInput
from mmrecall.encoders.frames import item_frames
from mmrecall.encoders.images import MAX_IMAGE_PIXELS, MediaError, load_image

__all__ = ["MAX_IMAGE_PIXELS", "MediaError", "load_content", "load_image"]


def load_content(
    title: str | None,
    tags: list[str] | None,
    cover: str | None,
    frames: list[str] | None,
    video: str | None = None,
    *,
    images: bool = True,
    n_frames: int = 1,
    item_id: str | None = None,
):
    """An item's content with its media decoded: the cover is frame 0 (else the first sampled frame),
    then frames sampled uniformly from the video or the frame list, n_frames in all."""
    decoded = item_frames(cover=cover, frames=frames, video=video, n=n_frames) if images else []
    return ContentInput(
        title=title or "",
        tags=list(tags or []),
        image=decoded[0] if decoded else None,
        frames=decoded[1:],
        item_id=item_id,
    )
