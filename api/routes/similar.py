"""Similar-content queries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from api.deps import ServingDep, SessionDep
from api.schemas import SimilarOut
from api.serving import NotReady, UnknownItem, similar_to

router = APIRouter(prefix="/v1", tags=["query"])


@router.get("/similar/{item_id}", response_model=SimilarOut)
def similar(
    item_id: str,
    session: SessionDep,
    serving: ServingDep,
    k: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict:
    """The k nearest items, best first (higher score = more similar), never the item itself."""
    try:
        return similar_to(session, serving, item_id, k)
    except UnknownItem as exc:
        raise HTTPException(404, str(exc)) from exc
    except NotReady as exc:
        raise HTTPException(409, str(exc)) from exc
