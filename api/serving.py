"""What the API serves from: the current snapshot plus every vector written since, kept fresh.

A background thread follows the snapshot pointer (swapped atomically by reindex jobs) and the vectors
table's change feed, so newly encoded items are queryable within `refresh_interval_s`.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from index.ann import VectorIndex
from index.live import LiveIndex
from mmrecall.settings import Settings
from storage import catalogue, snapshots
from storage.db import ItemVector, session_scope

log = logging.getLogger(__name__)

# Row ids are assigned at insert but may commit out of order (PostgreSQL): re-read a trailing
# window of rows behind the watermark so a late commit is not skipped.
FEED_WINDOW = 1000


class ServingIndex:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.live = LiveIndex()
        self.snapshot_name: str | None = None
        self.version: str | None = None
        self.watermark = 0
        self._seen_rows: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    # --- following the snapshot pointer and the change feed -------------------------------------
    def refresh(self) -> None:
        with self._refresh_lock:
            self._follow_snapshot()
            self._follow_feed()

    def _follow_snapshot(self) -> None:
        current = snapshots.current_snapshot(self.settings.snapshots_dir)
        if current is None or current.name == self.snapshot_name:
            return
        meta = snapshots.read_meta(current)
        loaded = VectorIndex.load(current)
        max_row = int(meta["max_row"])
        with session_scope(self.settings.resolved_database_url) as session:
            # rows at or below the snapshot's watermark are in it already
            in_snapshot = catalogue.vector_rows_after(session, meta["encoder_version"], max_row - FEED_WINDOW)
        self.live = LiveIndex(loaded)  # a new object: readers holding the old one finish on it
        self.snapshot_name, self.version = current.name, meta["encoder_version"]
        self.watermark = max_row
        self._seen_rows = {row for row in in_snapshot if row <= max_row}
        log.info("serving snapshot %s (%d vectors, %s)", current.name, len(loaded), self.version)

    def _follow_feed(self) -> None:
        with session_scope(self.settings.resolved_database_url) as session:
            if self.version is None:  # no snapshot yet: follow the newest encoder's vectors
                self.version = session.scalar(select(ItemVector.version).order_by(ItemVector.id.desc()).limit(1))
                if self.version is None:
                    return
            rows = catalogue.vector_rows_after(session, self.version, max(0, self.watermark - FEED_WINDOW))
            fresh = [row for row in rows if row not in self._seen_rows]
            for start in range(0, len(fresh), 10_000):
                chunk = fresh[start : start + 10_000]
                ids, matrix = catalogue.vectors_by_rows(session, chunk)
                self.live.add(ids, matrix)
                self._seen_rows.update(chunk)
        if rows:
            self.watermark = max(self.watermark, rows[-1])
            floor = self.watermark - FEED_WINDOW
            self._seen_rows = {row for row in self._seen_rows if row > floor}

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="serving-refresh", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.refresh_interval_s):
            try:
                self.refresh()
            except Exception:  # keep serving the last good state; log and try again
                log.exception("index refresh failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class UnknownItem(LookupError):
    """No such item id (HTTP 404)."""


class NotReady(RuntimeError):
    """The item exists but has no vector yet (HTTP 409)."""


def similar_to(session: Session, serving: ServingIndex, item_id: str, k: int) -> dict:
    """`{"item_id", "results": [{"id", "score", "title"}]}`: the k nearest items, never the item itself."""
    live, version = serving.live, serving.version
    vector = live.vector(item_id)
    if vector is None:
        item = catalogue.get_item(session, item_id)
        if item is None:
            raise UnknownItem(f"unknown item id {item_id!r}")
        stored = catalogue.get_vectors(session, version, [item_id]) if version else {}
        if item_id not in stored:
            reason = f": {item.error}" if item.error else ""
            raise NotReady(f"item {item_id!r} has no vector yet (status {item.status}{reason})")
        vector = stored[item_id]
    neighbors = live.search(vector, k, exclude={item_id})
    titles = catalogue.titles(session, [n.id for n in neighbors])
    return {
        "item_id": item_id,
        "results": [{"id": n.id, "score": n.score, "title": titles.get(n.id)} for n in neighbors],
    }
