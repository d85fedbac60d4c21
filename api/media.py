"""Media paths in requests must resolve inside the configured media roots (no `..`, no symlink escape)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException, UploadFile
from PIL import Image

from mmrecall.core.fetch import url_allowed
from mmrecall.core.interchange import ItemRecord
from mmrecall.core.settings import Settings

MAX_UPLOAD_PIXELS = 50_000_000


def confine(path: str, roots: list[Path]) -> str:
    if not roots:
        raise HTTPException(400, "media paths are not accepted: no MMRECALL_MEDIA_ROOTS configured")
    if any(ord(ch) < 32 for ch in path):
        raise HTTPException(400, f"path {path!r} holds control characters")
    try:
        resolved = Path(path).resolve()  # follows symlinks, so a link pointing out is caught too
    except (OSError, ValueError) as exc:  # e.g. a symlink loop, or a name the OS refuses
        raise HTTPException(400, f"path {path!r} cannot be resolved: {exc}") from exc
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            return str(resolved)
    raise HTTPException(400, f"media path {path!r} is outside the configured media roots")


def confine_media(path: str, settings: Settings) -> str:
    """A local path inside the media roots, or an http(s) URL whose host is on the allow-list."""
    if "://" not in path:
        return confine(path, settings.media_roots)
    parts = urlsplit(path)
    if parts.scheme not in ("http", "https"):
        raise HTTPException(400, f"media URL scheme {parts.scheme!r} is not supported (http or https)")
    if not url_allowed(path, settings.media_url_hosts):
        raise HTTPException(400, f"media URL host {parts.hostname!r} is not in MMRECALL_MEDIA_URL_HOSTS")
    return path


def confine_item(item: ItemRecord, settings: Settings) -> ItemRecord:
    return item.model_copy(
        update={
            "cover": confine_media(item.cover, settings) if item.cover else None,
            "video": confine_media(item.video, settings) if item.video else None,
            "frames": [confine_media(f, settings) for f in item.frames] if item.frames else item.frames,
        }
    )


async def save_upload(upload: UploadFile, settings: Settings, item_id: str) -> Path:
    """Size-check, then check it is an image without decoding pixels, then store it under uploads/."""
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"upload larger than {settings.max_upload_bytes} bytes")
    if not data:
        raise HTTPException(400, "empty upload")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.verify()
            kind = (image.format or "img").lower()
    except Exception as exc:
        raise HTTPException(400, f"upload is not a readable image: {exc}") from exc
    if width * height > MAX_UPLOAD_PIXELS:
        raise HTTPException(400, f"image too large: {width}x{height} pixels (limit {MAX_UPLOAD_PIXELS})")
    digest = hashlib.sha256(item_id.encode()).hexdigest()[:24]  # ids may hold any character
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    path = settings.uploads_dir / f"{digest}.{kind}"
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path.resolve()
