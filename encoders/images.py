"""Decoding image files, with a clear reason when that fails (the reason is stored as the item's error)."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

MAX_IMAGE_PIXELS = 50_000_000  # decompression-bomb guard: larger images are refused, not decoded


class MediaError(ValueError):
    """A media file that cannot be used; the message is stored as the item's error."""


def load_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open, check the size before decoding, decode fully, and return an RGB image."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise MediaError(f"image too large: {width}x{height} pixels (limit {max_pixels})")
                image.load()  # truncated files fail here, not later inside the batch
                return image.convert("RGB")
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"image too large: {exc}") from exc
    except OSError as exc:
        raise MediaError(f"unreadable image {path.name}: {exc}") from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise MediaError(f"corrupt image {path.name}: {type(exc).__name__}: {exc}") from exc
