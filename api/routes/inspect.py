"""What the web inspector (and any other client) reads besides queries: media, item and job lists,
a user's history and interests, the cluster list, and search by id or title."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from mmrecall.api.auth import READ
from mmrecall.api.deps import ServingDep, SessionDep, SettingsDep
from mmrecall.api.schemas import ERRORS
from mmrecall.api.search import search_items
from mmrecall.core.fetch import cached_path, is_url
from mmrecall.core.settings import Settings
from mmrecall.recall.multi_interest import interests
from mmrecall.recall.sources import RecallConfig
from mmrecall.storage import catalogue
from mmrecall.storage.thumbnails import thumbnail_path

router = APIRouter(prefix="/v1", tags=["inspect"], responses=ERRORS, dependencies=[READ])


def media_path(path: str | None, settings: Settings) -> Path:
    """A stored media path, served only if it still resolves inside the media roots or the uploads
    (a symlink placed later cannot lead out); URL media only from the fetch cache."""
    if not path:
        raise HTTPException(404, "no such media for this item")
    if is_url(path):
        cached = cached_path(path, settings)
        if cached is None:
            raise HTTPException(404, "this URL has not been fetched yet")
        return cached
    resolved = Path(path).resolve()
    roots = [*settings.media_roots, settings.uploads_dir]
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise HTTPException(403, "media path is outside the configured media roots")
    if not resolved.is_file():
        raise HTTPException(404, "media file is missing")
    return resolved


@router.get("/items/{item_id}/media/{kind}", response_class=FileResponse)
def item_media(
    item_id: str,
    kind: Literal["cover", "frame"],
    session: SessionDep,
    settings: SettingsDep,
    n: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> FileResponse:
    """The item's cover, or its n-th frame: a thumbnail kept at encode time (a video's sampled frames), else
    the n-th listed frame from the media store. A video item without a cover shows its first frame."""
    item = catalogue.get_item(session, item_id)
    if item is None or item.status == "deleted":
        raise HTTPException(404, f"unknown item id {item_id!r}")
    headers = {"Cache-Control": "private, max-age=300"}
    thumbnails = item.frame_thumbnails or 0
    if kind == "cover" and not item.cover and not item.frames and thumbnails:
        return FileResponse(thumbnail_path(settings, item_id, 0), headers=headers)
    if kind == "frame" and n < thumbnails and thumbnail_path(settings, item_id, n).is_file():
        return FileResponse(thumbnail_path(settings, item_id, n), media_type="image/jpeg", headers=headers)
    if kind == "cover":
        path = item.cover or (item.frames[0] if item.frames else None)
    else:
        path = item.frames[n] if item.frames and n < len(item.frames) else None
    return FileResponse(media_path(path, settings), headers=headers)


@router.get("/items")
def list_items(
    session: SessionDep,
    status: Annotated[Literal["pending", "encoding", "ready", "failed", "deleted"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    """Items, most recently changed first; `status=failed` lists failures with their reasons."""
    rows = catalogue.list_items(session, status=status, limit=limit)
    return {
        "items": [
            {"id": i.id, "title": i.title, "status": i.status, "error": i.error, "updated_at": i.updated_at}
            for i in rows
        ],
        "counts": catalogue.count_by_status(session),
    }


@router.get("/jobs")
def list_jobs(session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
    """Recent jobs, newest first, with progress."""
    return {
        "jobs": [
            {
                "id": j.id,
                "kind": j.kind,
                "state": j.state,
                "done": j.done,
                "total": j.total,
                "progress": (j.done / j.total) if j.total else (1.0 if j.state == "succeeded" else 0.0),
                "message": j.message,
                "error": j.error,
                "created_at": j.created_at,
                "updated_at": j.updated_at,
            }
            for j in catalogue.recent_jobs(session, limit=limit)
        ]
    }


@router.get("/users/{user_id}/history")
def user_history(user_id: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict:
    """The user's latest interactions, oldest first, with titles."""
    rows = catalogue.user_history(session, user_id, limit=limit)
    if not rows:
        raise HTTPException(404, f"user {user_id!r} has no interactions")
    titles = catalogue.titles(session, list({item for item, _, _ in rows}))
    return {
        "user_id": user_id,
        "history": [
            {"id": item, "title": titles.get(item), "timestamp": stamp, "event": event} for item, stamp, event in rows
        ],
    }


@router.get("/users/{user_id}/interests")
def user_interests(user_id: str, session: SessionDep, serving: ServingDep) -> dict:
    """The user's interests as the multi-interest channel finds them (PinnerSage: Ward clusters of the
    history, medoid, recency-weighted importance)."""
    rows = catalogue.user_history(session, user_id, limit=200)
    live = serving.state.live
    known = [item for item, _, _ in rows if live.vector(item) is not None]
    if not known:
        raise HTTPException(404, f"user {user_id!r} has no encoded history")
    config = RecallConfig()
    found = interests(
        np.stack([live.vector(i) for i in known]),
        threshold=config.interest_threshold,
        half_life=config.interest_half_life,
        max_interests=config.max_interests,
    )
    return {
        "user_id": user_id,
        "interests": [
            {
                "number": n,
                "medoid": known[i.medoid],
                "importance": i.importance,
                "members": [known[m] for m in i.members],
            }
            for n, i in enumerate(found)
        ],
    }


@router.get("/clusters")
def list_clusters(serving: ServingDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict:
    """The serving snapshot's k-means clusters, largest first, with their top tags."""
    state = serving.state
    table, snapshot, meta = state.clusters, state.live.snapshot, state.meta
    if table is None or snapshot is None:
        raise HTTPException(404, "no cluster table in the serving snapshot (run a reindex)")
    sizes = np.array([len(m) for m in table.members])
    out = []
    for cluster in np.argsort(-sizes, kind="stable")[:limit].tolist():
        counts: dict[str, int] = {}
        for row in table.members[cluster][:500].tolist():
            for tag in meta.tags(row) if meta is not None else []:
                counts[tag] = counts.get(tag, 0) + 1
        top = sorted(counts.items(), key=lambda pair: -pair[1])[:5]
        out.append(
            {
                "cluster_id": cluster,
                "size": int(sizes[cluster]),
                "top_tags": [t for t, _ in top],
                "sample": [snapshot.ids[r] for r in table.members[cluster][:6].tolist()],
            }
        )
    return {"clusters": out, "total": len(table.members)}


@router.get("/search")
def search(
    serving: ServingDep,
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, max_length=500)],
    k: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict:
    """An item id, else titles: exact and prefix matches first, then full-text relevance fused with the
    embedding rank of the query through the served encoder."""
    return search_items(settings, serving, q, k)
