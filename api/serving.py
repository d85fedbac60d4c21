"""What the API serves from: the current snapshot plus every vector written since, kept fresh.

A background thread follows the snapshot pointer (swapped atomically by reindex jobs), the vectors
table's change feed (newly encoded items are queryable within `refresh_interval_s`) and deletions.
Everything a request reads hangs off one `ServingState`, replaced whole on a swap, so a request never
sees half of an old snapshot and half of a new one.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from index.ann import VectorIndex
from index.clusters import ClusterTable, cluster_recall
from index.item_meta import ItemMeta
from index.live import LiveIndex
from index.personal import SeqTowerNumpy, UserTowerNumpy, gap_buckets_np, load_user_tower
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
    user_tower: UserTowerNumpy | SeqTowerNumpy | None = None
    meta: ItemMeta | None = None  # titles and tags of the snapshot's rows

    @classmethod
    def load(cls, directory: Path, meta: dict) -> ServingState:
        snapshot = VectorIndex.load(directory)
        clusters = (
            ClusterTable.load(directory / "clusters") if (directory / "clusters-centroids.npy").is_file() else None
        )
        rows = _mapped(directory / "v2v-rows.npy") if (directory / "v2v-rows.npy").is_file() else None
        scores = _mapped(directory / "v2v-scores.npy") if rows is not None else None
        tower = load_user_tower(directory / "user_tower.npz") if (directory / "user_tower.npz").is_file() else None
        item_meta = ItemMeta.load(directory)
        mapped = [snapshot.vectors, rows, scores]
        if item_meta is not None:
            mapped += [item_meta.blob, item_meta.title_spans, item_meta.tag_offsets, item_meta.tag_codes]
        for array in mapped:
            prefault(array)
        return cls(LiveIndex(snapshot), meta["encoder_version"], directory.name, clusters, rows, scores, tower,
                   item_meta)  # fmt: skip


def _mapped(path: Path) -> np.ndarray:
    """A read-only ndarray view of a memory-mapped .npy (shared between API processes by the page cache)."""
    return np.asarray(np.load(path, mmap_mode="r"))


def prefault(array: np.ndarray | None, page: int = 4096) -> None:
    """Read one byte of every page of a memory-mapped array, before it serves. Otherwise each request
    pays a page fault per page it touches first (a cluster's ~500 member vectors at 1M items are ~500
    faults), which a random-access workload keeps paying for a long time. The pages stay shared between
    the API processes through the page cache."""
    if array is None or not array.size or not array.flags.c_contiguous:
        return
    array.reshape(-1).view(np.uint8)[::page].max()


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
        # A snapshot holds millions of long-lived Python objects (ids, the id -> row dict): keep them out
        # of the cyclic collector's generations, or every full collection walks them in the middle of
        # a request (they are still freed by reference counting when the snapshot is replaced).
        gc.collect()
        gc.freeze()
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


class NeedsDatabase(RuntimeError):
    """Raised by in-memory-only sources when an answer needs the database (the caller moves to a thread)."""


class UnknownItem(LookupError):
    """No such item id (HTTP 404)."""


class NotReady(RuntimeError):
    """The item exists but has no vector yet (HTTP 409)."""


class ServiceSources:
    """index.recall_set's questions answered from a ServingState (see evaluation.recall_channels for
    the harness's dense counterpart). Snapshot items are answered from memory; the database is asked
    only about items written after the snapshot."""

    def __init__(self, state: ServingState, database_url: str, *, in_memory_only: bool = False,
                 history_times: dict[str, float] | None = None) -> None:  # fmt: skip
        self.state, self.database_url, self.in_memory_only = state, database_url, in_memory_only
        self.live = state.live
        self._db_tags: dict[str, list[str]] = {}
        self.history_times = history_times or {}  # item -> unix seconds of the user's interaction, when known

    def _snapshot_row(self, item: str) -> int | None:
        """The item's row in the snapshot's tables, unless it was re-encoded since (then they are stale)."""
        snapshot = self.live.snapshot
        if snapshot is None or item in self.live.superseded:
            return None
        return snapshot.position.get(item)

    def vector(self, item: str) -> np.ndarray | None:
        return self.live.vector(item)

    def _table_neighbors(
        self, item: str, n: int, exclude: set[str], *, complete: bool = False
    ) -> list[tuple[str, float]] | None:
        """Up to n neighbours from the v2v table plus the delta (items newer than the table), or None when
        the table cannot answer (no table, item not in it; with `complete`, fewer than n left)."""
        pos, state = self._snapshot_row(item), self.state
        if pos is None or state.v2v_rows is None:
            return None
        snapshot, deleted, superseded = self.live.snapshot, self.live.deleted, self.live.superseded
        row, scores = state.v2v_rows[pos], state.v2v_scores[pos]
        keep = row >= 0
        skip = {snapshot.position[i] for i in (deleted | superseded | exclude) if i in snapshot.position}
        if skip:  # usually a short history; a set lookup per table entry beats np.isin's sort for one row
            keep &= np.fromiter((r not in skip for r in row.tolist()), bool, len(row))
        ids = snapshot.ids
        found = [(ids[r], s) for r, s in zip(row[keep].tolist(), scores[keep].tolist(), strict=True)]
        if complete and len(found) < n and len(row) < len(ids) - 1:
            return None  # the table row is too short for this request
        if not self.live.has_delta:  # table rows are sorted already; no newer items to fold in
            return found[:n]
        fresh = self.live.search_delta(self.live.vector(item), n, exclude=exclude | {item})
        return sorted(found + [(x.id, x.score) for x in fresh], key=lambda p: -p[1])[:n]

    def neighbors(self, item: str, n: int) -> list[tuple[str, float]]:
        """From the v2v table when the item is in the snapshot (and was not re-encoded since), else live ANN."""
        found = self._table_neighbors(item, n, set())
        if found is not None:
            return found
        vector = self.live.vector(item)
        return [] if vector is None else [(x.id, x.score) for x in self.live.search(vector, n, exclude={item})]

    def nearest(self, item: str, vector: np.ndarray, n: int, exclude: set[str]) -> list[tuple[str, float]]:
        """Nearest items to a history item (a PinnerSage medoid): its cached v2v row where that answers."""
        found = self._table_neighbors(item, n, exclude, complete=True)
        return found if found is not None else self.search(vector, n, exclude)

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

    def _with_vectors(self, items: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The items that have a vector (unknown or deleted ones are skipped) and their vectors, in order."""
        pairs = [(i, v) for i, v in ((i, self.live.vector(i)) for i in items) if v is not None]
        vectors = np.stack([v for _, v in pairs]) if pairs else np.zeros((0, self.live.dim or 1), np.float32)
        return [i for i, _ in pairs], vectors

    def content_vectors(self, items: Sequence[str]) -> np.ndarray:
        """Vectors of the items that have one (unknown or deleted ones are skipped), oldest first."""
        return self._with_vectors(items)[1]

    def user_vector(self, history: Sequence[str], user: str | None) -> np.ndarray | None:
        items, vectors = self._with_vectors(history)
        if not len(vectors):
            return None
        tower = self.state.user_tower
        if isinstance(tower, SeqTowerNumpy):  # the user's active interests, (k, d)
            times = [self.history_times.get(i) for i in items]
            gaps = gap_buckets_np(np.array(times, np.float64)) if all(t is not None for t in times) else None
            return tower(vectors, user_key(user) if user is not None else None, gaps=gaps,
                         tag_pref=tower.tag_preferences([self.tags(i) for i in items]), user=user)  # fmt: skip
        if tower is not None:
            return tower(vectors, user_key(user) if user is not None else None)
        weights = np.power(0.9, np.arange(len(vectors) - 1, -1, -1))[:, None]  # no G yet: recency-weighted mean
        mean = (weights * vectors).sum(axis=0)
        return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)

    def search(self, vector: np.ndarray, n: int, exclude: set[str]) -> list[tuple[str, float]]:
        """Nearest items to a vector, or to several (interests): each item scored by its best one."""
        if vector.ndim == 1:
            return [(x.id, x.score) for x in self.live.search(vector, n, exclude=exclude)]
        best: dict[str, float] = {}
        for interest in vector:
            for x in self.live.search(interest, n, exclude=exclude):
                best[x.id] = max(best.get(x.id, -np.inf), x.score)
        return sorted(best.items(), key=lambda pair: -pair[1])[:n]

    def _from_database(self, items: set[str]) -> list[str]:
        """The items the snapshot's titles and tags cannot answer for: newer than it, or re-encoded since."""
        snapshot = self.live.snapshot
        if self.state.meta is None or snapshot is None:
            return list(items)
        position, superseded = snapshot.position, self.live.superseded
        return [i for i in items if i not in position or i in superseded]

    def prepare(self, items: set[str]) -> None:
        """Fetch, in one query, the tags of candidates the snapshot cannot answer for."""
        missing = [i for i in self._from_database(items) if i not in self._db_tags]
        if missing and self.in_memory_only:
            raise NeedsDatabase(f"tags of {len(missing)} items newer than the snapshot")
        if missing:
            with session_scope(self.database_url) as session:
                self._db_tags.update({i: [] for i in missing} | catalogue.tags_of(session, missing))

    def tags(self, item: str) -> Collection[str]:
        """First-level tags (the rerank's diversity categories)."""
        pos = self._snapshot_row(item) if self.state.meta is not None else None
        if pos is not None:
            return self.state.meta.top_level_tags(pos)
        return [t.split("/")[0] for t in self._db_tags.get(item) or []]

    def titles(self, items: Sequence[str]) -> dict[str, str | None]:
        meta, found = self.state.meta, {}
        for item in items:
            pos = self._snapshot_row(item) if meta is not None else None
            if pos is not None:
                found[item] = meta.title(pos)
        missing = [i for i in items if i not in found]
        if missing and self.in_memory_only:
            raise NeedsDatabase(f"titles of {len(missing)} items newer than the snapshot")
        if missing:
            with session_scope(self.database_url) as session:
                found.update(catalogue.titles(session, missing))
        return found


def user_key(user: str) -> int:
    """The same id hashing G was trained with (encoders.content_g.id_key), without importing torch."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little") >> 1


def similar_to(
    serving: ServingIndex, item_id: str, k: int, channel: str = "v2v", *, in_memory_only: bool = False
) -> dict:
    """`{"item_id", "channel", "results": [{"id", "score", "title"}]}`, never the item itself.

    in_memory_only: raise NeedsDatabase instead of reading the database (for callers on an event loop)."""
    state = serving.state
    url = serving.settings.resolved_database_url
    sources = ServiceSources(state, url, in_memory_only=in_memory_only)
    vector = state.live.vector(item_id)
    if vector is None or item_id in state.live.deleted:
        if in_memory_only:
            raise NeedsDatabase(f"item {item_id!r} is not in the serving index")
        with session_scope(url) as session:
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
    titles = sources.titles([i for i, _ in found])
    return {
        "item_id": item_id,
        "channel": channel,
        "results": [{"id": i, "score": s, "title": titles.get(i)} for i, s in found],
    }
