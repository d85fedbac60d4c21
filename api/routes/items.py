"""Ingest and inspect items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import ValidationError
from sqlalchemy import select

from mmrecall.api.auth import READ, WRITE
from mmrecall.api.deps import ServingDep, SessionDep, SettingsDep
from mmrecall.api.media import confine_item, save_upload
from mmrecall.api.schemas import ERRORS, IngestOut, ItemOut, ItemsIn
from mmrecall.core.interchange import ItemRecord
from mmrecall.pipeline.ingest import ingest_items
from mmrecall.storage import catalogue
from mmrecall.storage.db import ItemVector, session_scope

router = APIRouter(prefix="/v1/items", tags=["items"], responses=ERRORS)


@router.post("", status_code=202, response_model=IngestOut, dependencies=[WRITE])
def post_items(body: ItemsIn, settings: SettingsDep) -> IngestOut:
    """Store items (media paths must lie inside the media roots) and enqueue their encoding."""
    records = [confine_item(item, settings) for item in body.items]
    return IngestOut(ids=ingest_items(settings, records))


@router.post("/upload", status_code=202, response_model=IngestOut, dependencies=[WRITE])
async def upload_item(
    settings: SettingsDep,
    cover: Annotated[UploadFile, File(description="cover image")],
    id: Annotated[str, Form()],
    title: Annotated[str, Form()] = "",
    tags: Annotated[str, Form(description="comma-separated")] = "",
) -> IngestOut:
    """One item with its cover uploaded as multipart form data."""
    try:
        record = ItemRecord(id=id, title=title, tags=[t for t in tags.split(",") if t.strip()])
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from exc
    path = await save_upload(cover, settings, record.id)
    return IngestOut(ids=ingest_items(settings, [record.model_copy(update={"cover": str(path)})]))


@router.delete("/{item_id}", status_code=204, dependencies=[WRITE])
def delete_item(item_id: str, settings: SettingsDep, serving: ServingDep) -> None:
    """Remove an item from every channel at once; its vectors go, its past interactions stay."""
    with session_scope(settings.resolved_database_url) as session:
        if not catalogue.delete_item(session, item_id):
            raise HTTPException(404, f"unknown item id {item_id!r}")
    serving.mark_deleted([item_id])


@router.get("/{item_id}", response_model=ItemOut, dependencies=[READ])
def get_item(item_id: str, session: SessionDep) -> ItemOut:
    item = catalogue.get_item(session, item_id)
    if item is None:
        raise HTTPException(404, f"unknown item id {item_id!r}")
    versions = list(session.scalars(select(ItemVector.version).where(ItemVector.item_id == item_id)))
    return ItemOut(
        id=item.id,
        title=item.title,
        tags=item.tags or [],
        cover=item.cover,
        frames=item.frames,
        video=item.video,
        created_at=item.created_at,
        status=item.status,
        error=item.error,
        cluster_id=item.cluster_id,
        versions=versions,
        frames_used=item.frames_used,
        frame_thumbnails=item.frame_thumbnails or len(item.frames or []),
    )
