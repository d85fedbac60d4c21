"""What the API serves from: the current snapshot plus every vector written since, kept fresh.

A background thread follows the snapshot pointer (swapped atomically by reindex jobs), the vectors
table's change feed (newly encoded items are queryable within `refresh_interval_s`) and deletions.
Everything a request reads hangs off one `ServingState`, replaced whole on a swap, so a request never
sees half of an old snapshot and half of a new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from index.ann import VectorIndex
from index.clusters import ClusterTable, cluster_recall
from index.live import LiveIndex
from index.personal import UserTowerNumpy
from mmrecall.settings import Settings
from storage import catalogue, snapshots
from storage.db import ItemVector, session_scope

log = logging.getLogger(__name__)

# Row ids are assigned at insert but may commit out of order (PostgreSQL): re-read a trailing
# window of rows behind the watermark so a late commit is not skipped.
FEED_WINDOW = 1000


@dataclass
class ServingState:
    live: LiveIndex
    version: str | None = None
    snapshot_name: str | None = None
    clusters: ClusterTable | None = None
    v2v_rows: np.ndarray | None = None  # (n, N) neighbour rows of the snapshot
    v2v_scores: np.ndarray | None = None
    user_tower: UserTowerNumpy | None = None

    @classmethod
    def load(cls, directory: Path, meta: dict) -> ServingState:
        snapshot = VectorIndex.load(directory)
        clusters = (
            ClusterTable.load(directory / "clusters") if (directory / "clusters-centroids.npy").is_file() else None
        )
        rows = np.load(directory / "v2v-rows.npy", mmap_mode="r") if (directory / "v2v-rows.npy").is_file() else None
        scores = np.load(directory / "v2v-scores.npy", mmap_mode="r") if rows is not None else None
        tower = UserTowerNumpy.load(directory / "user_tower.npz") if (directory / "user_tower.npz").is_file() else None
        return cls(LiveIndex(snapshot), meta["encoder_version"], directory.name, clusters, rows, scores, tower)


class ServingIndex:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = ServingState(LiveIndex())
        self.watermark = 0
        self._seen_rows: set[int] = set()
        self._deleted_since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    @property
    def live(self) -> LiveIndex:
        return self.state.live

    @property
    def version(self) -> str | None:
        return self.state.version

    @property
    def snapshot_name(self) -> str | None:
        return self.state.snapshot_name

    # --- following the snapshot pointer, the change feed and deletions ----------------------------
    def refresh(self) -> None:
        with self._refresh_lock:
            self._follow_snapshot()
            self._follow_feed()
            self._follow_deletions()

    def _follow_snapshot(self) -> None:
        current = snapshots.current_snapshot(self.settings.snapshots_dir)
        if current is None or current.name == self.state.snapshot_name:
            return
        meta = snapshots.read_meta(current)
        state = ServingState.load(current, meta)
        state.live.deleted = set(self.state.live.deleted)
        max_row = int(meta["max_row"])
        with session_scope(self.settings.resolved_database_url) as session:
            # rows at or below the snapshot's watermark are in it already
            in_snapshot = catalogue.vector_rows_after(session, meta["encoder_version"], max_row - FEED_WINDOW)
        self.state = state  # one reference swap: requests in flight finish on the old state
        self.watermark = max_row
        self._seen_rows = {row for row in in_snapshot if row <= max_row}
        log.info("serving snapshot %s (%d vectors, %s)", current.name, len(state.live), state.version)

    def _follow_feed(self) -> None:
        state = self.state
        with session_scope(self.settings.resolved_database_url) as session:
            if state.version is None:  # no snapshot yet: follow the newest encoder's vectors
                state.version = session.scalar(select(ItemVector.version).order_by(ItemVector.id.desc()).limit(1))
                if state.version is None:
                    return
            rows = catalogue.vector_rows_after(session, state.version, max(0, self.watermark - FEED_WINDOW))
            fresh = [row for row in rows if row not in self._seen_rows]
            for start in range(0, len(fresh), 10_000):
                chunk = fresh[start : start + 10_000]
                ids, matrix = catalogue.vectors_by_rows(session, chunk)
                state.live.add(ids, matrix)
                self._seen_rows.update(chunk)
        if rows:
            self.watermark = max(self.watermark, rows[-1])
            floor = self.watermark - FEED_WINDOW
            self._seen_rows = {row for row in self._seen_rows if row > floor}

    def _follow_deletions(self) -> None:
        with session_scope(self.settings.resolved_database_url) as session:
            deleted = catalogue.deleted_since(session, self._deleted_since)
        if deleted:
            self.mark_deleted([item for item, _ in deleted])
            self._deleted_since = max(stamp for _, stamp in deleted)

    def mark_deleted(self, item_ids: Sequence[str]) -> None:
        """Honoured at once by every channel: searches and table lookups skip these ids."""
        self.state.live.deleted.update(item_ids)

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


class ServiceSources:
    """index.recall_set's questions answered from a ServingState (see evaluation.recall_channels for
    the harness's dense counterpart)."""

    def __init__(self, state: ServingState, session: Session) -> None:
        self.state, self.session = state, session
        self.live = state.live
        self._tags: dict[str, list[str]] = {}

    def vector(self, item: str) -> np.ndarray | None:
        return self.live.vector(item)

    def neighbors(self, item: str, n: int) -> list[tuple[str, float]]:
        """From the v2v table when the item is in the snapshot (and was not re-encoded since), else live ANN."""
        snapshot, state = self.live.snapshot, self.state
        pos = snapshot.position.get(item) if snapshot is not None else None
        if pos is not None and state.v2v_rows is not None and item not in self.live.superseded:
            rows, scores = state.v2v_rows[pos][:n], state.v2v_scores[pos][:n]
            deleted = self.live.deleted
            found = [(snapshot.ids[r], float(s)) for r, s in zip(rows, scores, strict=True) if r >= 0]
            found = [pair for pair in found if pair[0] not in deleted and pair[0] not in self.live.superseded]
            fresh = self.live.search_delta(self.live.vector(item), n, exclude={item})  # newer than the table
            return sorted(found + [(x.id, x.score) for x in fresh], key=lambda p: -p[1])[:n]
        vector = self.live.vector(item)
        return [] if vector is None else [(x.id, x.score) for x in self.live.search(vector, n, exclude={item})]

    def cluster_mates(self, triggers: Sequence[tuple[str, float]], n: int) -> list[dict]:
        table, snapshot = self.state.clusters, self.live.snapshot
        if table is None or snapshot is None:
            return []
        rows, weights, clusters = [], [], []
        for item, weight in triggers:
            vector = self.live.vector(item)
            if vector is None:
                continue
            pos = snapshot.position.get(item, -1)
            rows.append(pos)
            weights.append(weight)
            clusters.append(int(table.assignment[pos]) if pos >= 0 else table.assign(vector))
        vectors = np.asarray(snapshot.vectors)
        found = cluster_recall(table, vectors, list(zip(rows, weights, strict=True)), k=n + len(self.live.deleted),
                               trigger_clusters=clusters)  # fmt: skip
        deleted = self.live.deleted
        return [{"id": snapshot.ids[r], "score": s, "trigger": snapshot.ids[t] if t >= 0 else None}
                for r, s, t in found if snapshot.ids[r] not in deleted][:n]  # fmt: skip

    def content_vectors(self, items: Sequence[str]) -> np.ndarray:
        """Vectors of the items that have one (unknown or deleted ones are skipped), oldest first."""
        vectors = [v for v in (self.live.vector(i) for i in items) if v is not None]
        return np.stack(vectors) if vectors else np.zeros((0, self.live.dim or 1), np.float32)

    def user_vector(self, history: Sequence[str], user: str | None) -> np.ndarray | None:
        vectors = self.content_vectors(history)
        if not len(vectors):
            return None
        if self.state.user_tower is not None:
            key = user_key(user) if user is not None else None
            return self.state.user_tower(vectors, key)
        weights = np.power(0.9, np.arange(len(vectors) - 1, -1, -1))[:, None]  # no G yet: recency-weighted mean
        mean = (weights * vectors).sum(axis=0)
        return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)

    def search(self, vector: np.ndarray, n: int, exclude: set[str]) -> list[tuple[str, float]]:
        return [(x.id, x.score) for x in self.live.search(vector, n, exclude=exclude)]

    def prepare(self, items: set[str]) -> None:
        self._tags.update(catalogue.tags_of(self.session, items - set(self._tags)))

    def tags(self, item: str) -> list[str]:
        return [t.split("/")[0] for t in self._tags.get(item, [])]


def user_key(user: str) -> int:
    """The same id hashing G was trained with (encoders.content_g.id_key), without importing torch."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little") >> 1


def similar_to(session: Session, serving: ServingIndex, item_id: str, k: int, channel: str = "v2v") -> dict:
    """`{"item_id", "channel", "results": [{"id", "score", "title"}]}`, never the item itself."""
    state = serving.state
    sources = ServiceSources(state, session)
    vector = state.live.vector(item_id)
    if vector is None or item_id in state.live.deleted:
        item = catalogue.get_item(session, item_id)
        if item is None or item.status == "deleted":
            raise UnknownItem(f"unknown item id {item_id!r}")
        stored = catalogue.get_vectors(session, state.version, [item_id]) if state.version else {}
        if item_id not in stored:
            reason = f": {item.error}" if item.error else ""
            raise NotReady(f"item {item_id!r} has no vector yet (status {item.status}{reason})")
        state.live.add([item_id], stored[item_id][None, :])  # the feed will bring it anyway; answer now
    if channel == "cluster":
        found = [(r["id"], r["score"]) for r in sources.cluster_mates([(item_id, 1.0)], k)]
    else:
        found = sources.neighbors(item_id, k)
    titles = catalogue.titles(session, [i for i, _ in found])
    return {
        "item_id": item_id,
        "channel": channel,
        "results": [{"id": i, "score": s, "title": titles.get(i)} for i, s in found],
    }
