"""Append user interactions (clicks, ratings, watches)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from mmrecall.api.auth import WRITE
from mmrecall.api.deps import SessionDep, SettingsDep
from mmrecall.api.schemas import ERRORS, CountOut, InteractionsIn
from mmrecall.core.events import UnknownEvent, check_events
from mmrecall.storage import catalogue
from mmrecall.storage.db import Item

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/interactions", tags=["interactions"], responses=ERRORS)


@router.post("", status_code=202, response_model=CountOut, dependencies=[WRITE])
def post_interactions(body: InteractionsIn, session: SessionDep, settings: SettingsDep) -> CountOut:
    """Append interactions; each event name must be in the event map (MMRECALL_EVENTS), which says whether it
    is positive, negative or read feedback. Exact repeats are skipped."""
    try:
        check_events((row.event for row in body.interactions), settings.event_rules)
    except UnknownEvent as exc:
        raise HTTPException(400, str(exc)) from exc
    wanted = {row.item_id for row in body.interactions}
    known = set(session.scalars(select(Item.id).where(Item.id.in_(wanted))))
    unknown = sorted(wanted - known)
    if unknown:
        raise HTTPException(400, f"unknown item ids: {unknown[:20]}")
    added = catalogue.add_interactions(session, body.interactions)
    log.info("stored %d of %d interactions", added, len(body.interactions))
    return CountOut(count=added)
