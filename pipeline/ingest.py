"""Ingest: store items (committed first), then enqueue their encoding. Called by the API and the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from mmrecall.core.events import check_events
from mmrecall.core.interchange import InteractionRecord, ItemRecord, read_interactions, read_items
from mmrecall.core.settings import Settings
from mmrecall.pipeline.queue import BrokerUnavailable, check_broker, enqueue_encode, workers_alive
from mmrecall.pipeline.runner import start_worker, wait_for_items, wait_for_workers
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope


def ingest_items(settings: Settings, records: Sequence[ItemRecord], *, enqueue: bool = True) -> list[str]:
    """The database is the source of truth: items are committed before any task names them."""
    with session_scope(settings.resolved_database_url) as session:
        ids = catalogue.upsert_items(session, records)
    if enqueue and ids:
        try:
            enqueue_encode(settings, ids)
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(
                f"{len(ids)} items stored as pending, not yet queued for encoding: {exc}; workers send them "
                "again once it answers (the reconcile sweep), or send them again yourself"
            ) from exc
    return ids


def ingest_interactions(settings: Settings, rows: Iterable[InteractionRecord]) -> int:
    """Store interactions (exact repeats skipped); UnknownEvent, storing nothing, when an event name is not
    in the settings' event map."""
    rows = list(rows)
    check_events((row.event for row in rows), settings.event_rules)
    with session_scope(settings.resolved_database_url) as session:
        return catalogue.add_interactions(session, rows)


def bulk_ingest(
    settings: Settings,
    dataset: Path,
    *,
    interactions: bool = True,
    wait: bool = True,
    ensure_worker: bool = False,
    chunk: int = 1000,
) -> dict:
    """Ingest a dataset directory in chunks (each committed, then enqueued), with progress bars."""

    settings.ensure_dirs()
    started = time.time()
    records = list(read_items(dataset))  # the whole file is checked before anything is stored
    rows = list(read_interactions(dataset)) if interactions else []
    check_events((row.event for row in rows), settings.event_rules)  # and every event name
    worker = None
    check_broker(settings)  # say so before storing anything
    if wait and not workers_alive(settings):
        if not ensure_worker:
            raise ValueError("no worker answers on this queue: run `mmrecall worker` (or pass --start-worker)")
        worker = start_worker(settings, concurrency=2)
        wait_for_workers(settings)
    try:
        ids: list[str] = []
        for start in tqdm(range(0, len(records), chunk), desc="storing items", unit="chunk"):
            ids.extend(ingest_items(settings, records[start : start + chunk]))
        added = 0
        if interactions:
            for start in tqdm(range(0, len(rows), 20_000), desc="storing interactions", unit="chunk"):
                added += ingest_interactions(settings, rows[start : start + 20_000])
        report: dict = {"items": len(ids), "interactions_added": added}
        if not wait:
            return report
        counts = wait_for_items(settings, ids)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
    seconds = time.time() - started
    with session_scope(settings.resolved_database_url) as session:
        failed = catalogue.failed_items(session, ids, limit=5)
    report.update(
        ready=counts.get("ready", 0),
        failed=counts.get("failed", 0),
        seconds=round(seconds, 1),
        items_per_s=round(len(ids) / seconds, 1),
        failed_examples=failed,
    )
    return report
