"""Media given as URLs: fetched only from allow-listed hosts, size-capped, cached by URL digest.

The API refuses other hosts at ingest; the worker checks again before fetching (the catalogue may
hold URLs from before the allow-list changed).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from mmrecall.core.settings import Settings


class FetchError(ValueError):
    """The media URL cannot be fetched; the message becomes the item's error."""


def is_url(path: str | None) -> bool:
    return path is not None and "://" in path


def url_allowed(url: str, hosts: list[str]) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and (parts.hostname or "").lower() in {h.lower() for h in hosts}


def fetch_media(url: str, settings: Settings, *, timeout: float = 30.0) -> Path:
    """Download to `home/media-cache/` (once per URL) and return the local path."""
    if not url_allowed(url, settings.media_url_hosts):
        raise FetchError(f"media URL host {urlsplit(url).hostname!r} is not in MMRECALL_MEDIA_URL_HOSTS")
    target = _cache_path(url, settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        return target
    partial = target.with_name(target.name + ".part")
    try:
        _download(url, partial, settings.max_media_bytes, timeout)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def _cache_path(url: str, settings: Settings) -> Path:
    suffix = Path(urlsplit(url).path).suffix[:8]
    return settings.home / "media-cache" / (hashlib.sha256(url.encode()).hexdigest()[:32] + suffix)


def cached_path(url: str, settings: Settings) -> Path | None:
    """Where a fetched URL's file lies, if it was fetched."""
    path = _cache_path(url, settings)
    return path if path.is_file() else None


def _download(url: str, partial: Path, max_bytes: int, timeout: float) -> None:
    try:
        # no redirects: a redirect could lead to a host that is not on the allow-list
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
            if response.status_code != 200:
                raise FetchError(f"fetching {url} gave HTTP {response.status_code}")
            size = 0
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(1 << 16):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(f"media at {url} is larger than {max_bytes} bytes")
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise FetchError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc
