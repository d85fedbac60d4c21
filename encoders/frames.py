"""Frames of an item: the cover is frame 0, then N frames sampled uniformly from a video or a frame list.

An item with only a cover is a one-frame video. Videos decode through PyAV, seeking to each sampled
timestamp rather than decoding the whole stream; rotation metadata is applied; frames are scaled down
while decoding so a 4K video costs no more memory than a small one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
from PIL import Image

from mmrecall.encoders.images import MediaError, load_image

MAX_FRAMES = 64  # more than this per item is refused: it is a mistake, not a request
FRAME_SHORT_SIDE = 256  # decoded frames are scaled so their short side is at most this


def _check_count(n: int) -> None:
    if not 1 <= n <= MAX_FRAMES:
        raise MediaError(f"frame count {n} out of range 1..{MAX_FRAMES}")


def uniform_positions(total: int, n: int) -> list[int]:
    """n indices spread evenly over range(total), each the middle of its segment."""
    if total <= 0:
        return []
    n = min(n, total)
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def _to_image(frame: av.VideoFrame, short_side: int) -> Image.Image:
    width, height = frame.width, frame.height
    scale = min(1.0, short_side / max(1, min(width, height)))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = frame.to_image(width=target[0], height=target[1])
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 360:
        image = image.rotate(rotation, expand=True)  # PyAV reports the display rotation, counter-clockwise
    return image.convert("RGB")


def sample_video_frames(path: str | Path, n: int, *, short_side: int = FRAME_SHORT_SIDE) -> list[Image.Image]:
    """n frames nearest to uniform timestamps (segment middles), in one forward decoding pass.

    Non-reference frames are skipped while decoding (about half the cost); a frame is converted to an
    image only when picked. Raises MediaError with the reason when the file cannot be used.
    """
    _check_count(n)
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"video is empty (0 bytes): {path.name}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"no video stream in {path.name}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.skip_frame = "NONREF"
            duration = _duration_seconds(container, stream)
            if not duration:  # no usable duration: keep every decoded frame, then pick
                decoded = [_to_image(f, short_side) for f in container.decode(stream)]
                return [decoded[i] for i in uniform_positions(len(decoded), n)]
            start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
            targets = [start + duration * (i + 0.5) / n for i in range(n)]
            images: list[Image.Image] = []
            last = None
            for frame in container.decode(stream):
                last = frame
                seconds = float(frame.pts * stream.time_base) if frame.pts is not None else None
                while targets and (seconds is None or seconds >= targets[0]):
                    images.append(_to_image(frame, short_side))
                    targets.pop(0)
                if not targets:
                    break
            if last is None:
                raise MediaError(f"no frame could be decoded from {path.name}")
            images += [_to_image(last, short_side) for _ in targets]  # a stream shorter than its header says
            return images
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"undecodable video {path.name}: {type(exc).__name__}: {exc}") from exc


def _duration_seconds(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # microseconds
    return None


def item_frames(*, cover: str | None, frames: Sequence[str] | None, video: str | None, n: int) -> list[Image.Image]:
    """Up to n frames: the cover first, the rest sampled from the video or the frame list."""
    _check_count(n)
    out: list[Image.Image] = [load_image(cover)] if cover else []
    room = n - len(out)
    if room > 0 and video:
        out += sample_video_frames(video, room)
    elif room > 0 and frames:
        out += [load_image(frames[i]) for i in uniform_positions(len(frames), room)]
    return out
