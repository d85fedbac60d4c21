"""The web inspector: static HTML/JS at /ui (no build step) that reads the JSON API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}

router = APIRouter(tags=["ui"], include_in_schema=False)


@router.get("/ui/static/{name}")
def static(name: str) -> FileResponse:
    if name not in STATIC:
        raise HTTPException(404, "no such file")
    return FileResponse(UI_DIR / name, media_type=STATIC[name])


@router.get("/ui")
@router.get("/ui/{page:path}")
def page(page: str = "") -> FileResponse:
    """Every inspector page is the same document; the script picks the view from the path. The page
    itself holds no data: the API calls it makes need the read key where keys are configured."""
    return FileResponse(UI_DIR / "index.html", media_type="text/html")
