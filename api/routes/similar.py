"""Queries: similar content, the full recall set for a user or a history, cluster listings."""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from mmrecall.api.auth import READ
from mmrecall.api.deps import ServingDep, SessionDep, searched
from mmrecall.api.schemas import ERRORS, ClusterOut, FilterIn, RecallIn, RecallOut, SimilarOut
from mmrecall.core.errors import ServiceUnavailable
from mmrecall.recall.channels import SIMILAR_CHANNELS
from mmrecall.recall.filters import FilterError
from mmrecall.recall.service import NoKnownHistory, history_recall, stored_history
from mmrecall.recall.serving import NeedsDatabase, NotReady, ServingIndex, UnknownItem, similar_to
from mmrecall.storage.db import Item

log = logging.getLogger(__name__)
# what a recall for a user says while the database is down (their history and feedback cannot be read)
DEGRADED_HISTORY = "served without the user's stored history or feedback, from the non-personalised channels"
SNAPSHOT_FALLBACKS = ("popular", "trending")

router = APIRouter(prefix="/v1", tags=["query"], responses=ERRORS)
SimilarChannel = Literal[SIMILAR_CHANNELS]  # type: ignore[valid-type]  # from the channel registry
SIMILAR_K, SIMILAR_K_MAX = 50, 1000  # /v1/similar's default and largest k (api.fast checks the same)


# The two hot routes are `async def`: their work is in-memory CPU, so each request runs to completion on
# the event loop instead of interleaving with others in the thread pool under the GIL (measured at 10k
# items, 8 clients: recall p99 132 ms in the thread pool). The rare database reads go to a thread, and so
# does all of it when a vector store answers the searches over the network (api.deps.searched).
@router.get("/similar/{item_id}", response_model=SimilarOut, dependencies=[READ])
async def similar(
    item_id: str,
    serving: ServingDep,
    k: Annotated[int, Query(ge=1, le=SIMILAR_K_MAX)] = SIMILAR_K,
    channel: Annotated[SimilarChannel, Query()] = "v2v",
    include_tags: Annotated[list[str], Query(description="items with one of these tags (repeat the parameter)")] = [],  # noqa: B006
    exclude_tags: Annotated[list[str], Query(description="items with none of these tags")] = [],  # noqa: B006
    exclude_ids: Annotated[list[str], Query(description="never these items")] = [],  # noqa: B006
    created_after: float | None = None,
    created_before: float | None = None,
    new_only: bool = False,
) -> dict:
    """The k nearest items (v2v) or the item's cluster-mates, best first, never the item itself; the
    filters are /v1/recall's."""
    try:
        recall_filter = FilterIn(
            include_tags=include_tags,
            exclude_tags=exclude_tags,
            exclude_ids=exclude_ids,
            created_after=created_after,
            created_before=created_before,
            new_only=new_only,
        ).recall_filter()
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    try:
        try:
            in_memory = partial(
                similar_to, serving, item_id, k, channel, recall_filter=recall_filter, in_memory_only=True
            )
            return await searched(serving, in_memory)
        except NeedsDatabase:
            return await run_in_threadpool(
                partial(similar_to, serving, item_id, k, channel, recall_filter=recall_filter)
            )
    except UnknownItem as exc:
        raise HTTPException(404, str(exc)) from exc
    except (NotReady, FilterError) as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/recall", response_model=RecallOut, dependencies=[READ])
async def recall(body: RecallIn, serving: ServingDep) -> dict:
    """The merged recall set with provenance: which channels recalled each item, from which trigger."""
    seen: list[str] = []
    degraded = None
    if body.user_id is not None:
        settings = serving.settings
        try:
            rows, seen = await run_in_threadpool(
                partial(
                    stored_history,
                    serving.database_url,
                    body.user_id,
                    settings.event_rules,
                    read_exclude_s=settings.read_exclude_s,
                )
            )
        except OperationalError as exc:
            # the database is down: a read is still served from the loaded snapshot, as for a user without
            # history (the fallback channels), and the answer says so, rather than refused with a 503
            log.warning("recall for user %r without their history: the database does not answer", body.user_id)
            rows, degraded = [], f"the database does not answer ({type(exc.orig).__name__}): {DEGRADED_HISTORY}"
        history, times = [item for item, _ in rows], dict(rows)
    else:
        history = list(body.history or [])
        times = dict(zip(history, body.times, strict=True)) if body.times else {}
    if degraded:
        return await run_in_threadpool(partial(degraded_recall, serving, body, degraded))
    options = {**recall_options(body), "seen_items": seen}
    try:
        try:
            answer = await searched(
                serving, partial(history_recall, serving, history, times, in_memory_only=True, **options)
            )
        except NeedsDatabase:  # candidates newer than the snapshot: their tags and titles come from the database
            answer = await run_in_threadpool(
                partial(history_recall, serving, history, times, in_memory_only=False, **options)
            )
    except NoKnownHistory as exc:
        raise HTTPException(400, str(exc)) from exc
    except FilterError as exc:
        raise HTTPException(409, str(exc)) from exc
    return answer


def degraded_recall(serving: ServingIndex, body: RecallIn, reason: str) -> dict:
    """A stored user's recall while the database is down: the non-personalised channels the loaded snapshot
    answers alone (`latest` lists items newer than it, whose titles are in the database)."""
    try:
        options = {**recall_options(body), "channels": SNAPSHOT_FALLBACKS}
        answer = history_recall(serving, [], {}, in_memory_only=True, **options)
    except NeedsDatabase as exc:
        raise ServiceUnavailable(f"the database does not answer and the snapshot alone cannot: {exc}") from exc
    return {**answer, "fallback": True, "degraded": reason}


def recall_options(body: RecallIn) -> dict:
    """What of a /v1/recall body the recall service reads besides the history."""
    return {
        "k": body.k,
        "channels": body.channels if "channels" in body.model_fields_set else None,  # None: with fallbacks
        "user_id": body.user_id,
        "recall_filter": body.recall_filter(),
    }


@router.get("/clusters/{cluster_id}", response_model=ClusterOut, dependencies=[READ])
def cluster(
    cluster_id: int, session: SessionDep, serving: ServingDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> dict:
    """A k-means cluster's items (from the serving snapshot), with titles and the top tags."""
    state = serving.state
    table, snapshot = state.clusters, state.live.snapshot
    if table is None or snapshot is None or not 0 <= cluster_id < len(table.members):
        raise HTTPException(404, f"no cluster {cluster_id} in the serving snapshot")
    members = [snapshot.ids[r] for r in table.members[cluster_id] if snapshot.ids[r] not in state.live.deleted]
    rows = session.execute(select(Item.id, Item.title, Item.tags).where(Item.id.in_(members[:limit]))).all()
    counts: dict[str, int] = {}
    for _, _, tags in rows:
        for tag in tags or []:
            counts[tag] = counts.get(tag, 0) + 1
    top = sorted(counts.items(), key=lambda pair: -pair[1])[:10]
    return {
        "cluster_id": cluster_id,
        "size": len(members),
        "top_tags": [{"tag": t, "count": c} for t, c in top],
        "items": [{"id": i, "title": t} for i, t, _ in rows],
    }
