"""Append user interactions (clicks, ratings, watches)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from mmrecall.api.auth import WRITE
from mmrecall.api.deps import SessionDep
from mmrecall.api.schemas import ERRORS, CountOut, InteractionsIn
from mmrecall.storage import catalogue
from mmrecall.storage.db import Item

router = APIRouter(prefix="/v1/interactions", tags=["interactions"], responses=ERRORS)


@router.post("", status_code=202, response_model=CountOut, dependencies=[WRITE])
def post_interactions(body: InteractionsIn, session: SessionDep) -> CountOut:
    wanted = {row.item_id for row in body.interactions}
    known = set(session.scalars(select(Item.id).where(Item.id.in_(wanted))))
    unknown = sorted(wanted - known)
    if unknown:
        raise HTTPException(400, f"unknown item ids: {unknown[:20]}")
    return CountOut(count=catalogue.add_interactions(session, body.interactions))
