"""The catalogue back out in the interchange format (`items.jsonl`, `interactions.csv`): what training
from the catalogue reads, and what `mmrecall export DIR` writes. Media paths stay absolute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select

from mmrecall.core.interchange import InteractionRecord, ItemRecord, write_interactions, write_items
from mmrecall.storage.db import Interaction, Item, session_scope

CHUNK = 20_000


def export_catalogue(database_url: str, directory: Path, *, statuses: tuple[str, ...] = ("ready",)) -> dict[str, int]:
    """Write the items of the given statuses and every interaction with them; {"items", "interactions"}."""
    with session_scope(database_url) as session:
        items = write_items(directory, _items(session, statuses))
        kept = {row for row in session.scalars(select(Item.id).where(Item.status.in_(statuses)))}
        interactions = write_interactions(directory, (r for r in _interactions(session) if r.item_id in kept))
    return {"items": items, "interactions": interactions}


def _items(session, statuses: tuple[str, ...]) -> Iterator[ItemRecord]:
    query = select(Item).where(Item.status.in_(statuses)).order_by(Item.id)
    for item in session.scalars(query.execution_options(yield_per=CHUNK)):
        yield ItemRecord(
            id=item.id,
            title=item.title or "",
            tags=list(item.tags or []),
            cover=item.cover,
            frames=item.frames,
            video=item.video,
            created_at=item.created_at,
        )


def _interactions(session) -> Iterator[InteractionRecord]:
    query = select(Interaction).order_by(Interaction.id)  # ingest order: file order breaks timestamp ties
    for row in session.scalars(query.execution_options(yield_per=CHUNK)):
        yield InteractionRecord(
            user_id=row.user_id,
            item_id=row.item_id,
            timestamp=row.timestamp,
            event=row.event or None,
            weight=row.weight,
        )
