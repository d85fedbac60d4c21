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
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from mmrecall.core.features import gap_buckets, id_key
from mmrecall.core.settings import Settings
from mmrecall.index.clusters import ClusterTable, cluster_recall
from mmrecall.index.item_meta import ItemMeta
from mmrecall.index.live import LiveIndex
from mmrecall.index.ranked import NO_ROWS, Ranked, member_mask, top_rows
from mmrecall.index.store import StoreError, VectorStore, serving_store
from mmrecall.index.v2v import stack_neighbors
from mmrecall.recall.filters import EXACT_MAX_ROWS, AllowedRows, FilterCache, FilterError, RecallFilter, SnapshotRows
from mmrecall.recall.sequential import SequentialModel
from mmrecall.recall.towers import SeqTowerNumpy, UserTowerNumpy, tower_from_arrays
from mmrecall.storage import catalogue, snapshots
from mmrecall.storage.db import ItemVector, session_scope

log = logging.getLogger(__name__)

# Row ids are assigned at insert but may commit out of order (PostgreSQL): re-read a trailing
# window of rows behind the watermark so a late commit is not skipped.
FEED_WINDOW = 1000
# Between reads of that window, a refresh only asks for the newest row id (one index lookup): reading the
# window every tick cost the API 3.5% of its throughput at 1M items. A late commit below the newest row
# is picked up by the next read, at most this long after.
FEED_WINDOW_EVERY_S = 2.0
STORE_RETRY_S = 30.0  # how often a snapshot refused for its store collection is tried again


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
    popularity: np.ndarray | None = None  # the cluster channel's popularity prior by snapshot row, in [0, 1]
    recall: dict | None = None  # the recall set's parameters tuned at reindex (recall.tuning; None: defaults)
    sequential: SequentialModel | None = None  # the sequential channel's model (None: not trained)
    created: np.ndarray | None = None  # created_at by snapshot row (NaN: not given; None: an older snapshot)
    rankings: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # the fallback channels' (index.rankings)
    created_at: float | None = None  # when the snapshot was built (unix seconds)
    filter_cache: FilterCache = field(default_factory=FilterCache)  # catalogue filters' snapshot rows
    # (title, tags, created_at) of the items newer than the snapshot, read with their vectors: requests
    # answer them from memory, and keep answering while the database is down
    delta_facts: dict[str, tuple[str | None, list[str], float | None]] = field(default_factory=dict)

    @classmethod
    def from_snapshot(cls, snapshot: snapshots.Snapshot) -> ServingState:
        item_meta = snapshot.item_meta
        mapped = [snapshot.index.vectors, snapshot.v2v_rows, snapshot.v2v_scores, snapshot.popularity]
        if item_meta is not None:
            mapped += [item_meta.blob, item_meta.title_spans, item_meta.tag_offsets, item_meta.tag_codes]
        for array in mapped:
            prefault(array)
        tower = tower_from_arrays(snapshot.user_tower) if snapshot.user_tower is not None else None
        return cls(
            LiveIndex(snapshot.index),
            snapshot.meta["encoder_version"],
            snapshot.directory.name,
            snapshot.clusters,
            snapshot.v2v_rows,
            snapshot.v2v_scores,
            tower,
            item_meta,
            snapshot.popularity,
            snapshot.meta.get("recall"),
            SequentialModel(snapshot.sequential) if snapshot.sequential is not None else None,
            snapshot.created,
            snapshot.rankings,
            snapshot.meta.get("created_at"),
        )


def prefault(array: np.ndarray | None, page: int = 4096) -> None:
    """Read one byte of every page of a memory-mapped array, before it serves. Otherwise each request
    pays a page fault per page it touches first (a cluster's ~500 member vectors at 1M items are ~500
    faults), which a random-access workload keeps paying for a long time. The pages stay shared between
    the API processes through the page cache."""
    if array is None or not array.size or not array.flags.c_contiguous:
        return
    array.reshape(-1).view(np.uint8)[::page].max()


def new_rows(state: ServingState) -> np.ndarray:
    """(rows,) bool: the items without behaviour as of the snapshot (no interaction counted at its reindex),
    and every item encoded since (newer than its counts), the `new_only` filter's rows."""
    live = state.live
    mask = np.ones(live.base + len(live.delta_ids), bool)
    if state.popularity is not None and live.base:
        mask[: live.base] = np.asarray(state.popularity[: live.base]) <= 0
        for snapshot_row, delta_row in live.moved_rows().items():  # re-encoded since: its count still holds
            mask[delta_row] = mask[snapshot_row]
    return mask


def allowed_rows(
    state: ServingState, recall_filter: RecallFilter, database_url: str, *, in_memory_only: bool
) -> AllowedRows | None:
    """The rows a request's catalogue filter allows (None: it has none). The snapshot's part is cached on
    the state; rows newer than the snapshot are checked against the database (NeedsDatabase when the
    caller may not read it). FilterError: the snapshot lacks what the filter reads."""
    if not recall_filter.catalogue_part:
        return None
    live = state.live
    base, delta_ids = live.base, list(live.delta_ids)  # a copy: the feed may append while this runs
    snapshot = state.filter_cache.get(recall_filter.catalogue_part, lambda: _snapshot_rows(state, recall_filter))
    delta = np.ones(len(delta_ids), bool)
    if len(delta_ids) and recall_filter.new_only:
        delta &= new_rows(state)[base : base + len(delta_ids)]
    if len(delta_ids) and recall_filter.reads_item_facts:
        facts = {i: state.delta_facts[i] for i in delta_ids if i in state.delta_facts}
        missing = [i for i in delta_ids if i not in facts]
        if missing and in_memory_only:
            raise NeedsDatabase(f"tags and creation times of {len(missing)} items newer than the snapshot")
        if missing:
            with session_scope(database_url) as session:
                facts.update(catalogue.item_facts(session, missing))
        passes = (recall_filter.passes(*facts.get(i, (None, [], None))[1:]) for i in delta_ids)
        delta &= np.fromiter(passes, bool, len(delta_ids))
    delta_rows = base + np.flatnonzero(delta)
    dim = live.dim or 1
    if snapshot.vectors is not None and len(delta_rows):
        delta_vectors = np.stack([live.row_vector(r) for r in delta_rows.tolist()]).astype(np.float32)
    else:
        delta_vectors = np.zeros((0, dim), np.float32)
    return AllowedRows(np.concatenate([snapshot.mask, delta]), snapshot, delta_rows, delta_vectors)


def _snapshot_rows(state: ServingState, recall_filter: RecallFilter) -> SnapshotRows:
    """A catalogue filter over the snapshot's rows only (what the cache may keep for the state's lifetime)."""
    live, meta = state.live, state.meta
    mask = np.ones(live.base, bool)
    if recall_filter.include_tags or recall_filter.exclude_tags:
        if meta is None:
            raise FilterError("the serving snapshot has no tag table to filter by; run `mmrecall reindex`")
        if recall_filter.include_tags:
            mask &= meta.rows_with_tags(recall_filter.include_tags)
        if recall_filter.exclude_tags:
            mask &= ~meta.rows_with_tags(recall_filter.exclude_tags)
    if recall_filter.reads_time:
        if state.created is None:
            raise FilterError("the serving snapshot has no creation times to filter by; run `mmrecall reindex`")
        created = np.asarray(state.created[: live.base])
        with np.errstate(invalid="ignore"):  # NaN (no creation time) passes no time bound
            if recall_filter.created_after is not None:
                mask &= created > recall_filter.created_after
            if recall_filter.created_before is not None:
                mask &= created < recall_filter.created_before
    if recall_filter.new_only:
        mask &= new_rows(state)[: live.base]
    rows = np.flatnonzero(mask)
    if live.snapshot is not None and len(rows) <= EXACT_MAX_ROWS:
        return SnapshotRows.gathered(mask, live.snapshot.vectors[rows])
    return SnapshotRows(mask, rows, None)


class ServingIndex:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database_url = settings.resolved_database_url  # once: resolving the home path costs a syscall per call
        self.state = ServingState(LiveIndex())
        self.watermark = 0
        self._seen_rows: set[int] = set()
        self._deleted_since = 0.0
        self._newest_row = -1  # the newest vector row at the feed window's last read
        self._window_read_at = -FEED_WINDOW_EVERY_S  # and when that read was (time.monotonic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self._store: list[VectorStore | None] = []  # where the snapshots' searches go, once opened (None: faiss)
        # a published snapshot that could not be served (its store collection missing, of another dimension,
        # the store down): (name, reason, when), retried every STORE_RETRY_S while the old state serves
        self.refused: tuple[str, str, float] | None = None

    @property
    def live(self) -> LiveIndex:
        return self.state.live

    @property
    def version(self) -> str | None:
        return self.state.version

    @property
    def snapshot_name(self) -> str | None:
        return self.state.snapshot_name

    def store(self) -> VectorStore | None:
        """The configured vector store, opened on first use (None: each snapshot's own faiss index)."""
        if not self._store:
            self._store.append(serving_store(self.settings.vector_store, home=self.settings.home))
        return self._store[0]

    # --- following the snapshot pointer, the change feed and deletions ----------------------------
    def refresh(self) -> None:
        with self._refresh_lock:
            self._follow_snapshot()
            self._follow_feed()
            self._follow_deletions()

    def _follow_snapshot(self) -> None:
        current = snapshots.current_snapshot(self.settings.snapshots_dir)
        if current is None or current.name == self.state.snapshot_name:
            if current is not None:
                self.refused = None  # the pointer is back on what serves: nothing is refused any more
            return
        refused = self.refused
        if refused and refused[0] == current.name and time.monotonic() - refused[2] < STORE_RETRY_S:
            return
        try:  # SnapshotLayoutError names the command that rebuilds it
            snapshot = snapshots.load_snapshot(current, store=self.store())
        except StoreError as exc:
            self.refused = (current.name, str(exc), time.monotonic())
            if self.state.snapshot_name is None:
                raise  # nothing serves yet: the API does not start on it
            log.error("snapshot %s not served, %s serves on: %s", current.name, self.state.snapshot_name, exc)
            return
        self.refused = None
        meta = snapshot.meta
        state = ServingState.from_snapshot(snapshot)
        state.live.deleted = set(self.state.live.deleted)
        max_row = int(meta["max_row"])
        with session_scope(self.database_url) as session:
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
        self._newest_row = -1  # read the feed's window now: rows after the snapshot go to its delta
        log.info("serving snapshot %s (%d vectors, %s)", current.name, len(state.live), state.version)

    def _follow_feed(self) -> None:
        state = self.state
        with session_scope(self.database_url) as session:
            if state.version is None:  # no snapshot yet: follow the newest encoder's vectors
                state.version = session.scalar(select(ItemVector.version).order_by(ItemVector.id.desc()).limit(1))
                if state.version is None:
                    return
            newest, now = catalogue.max_vector_row(session, state.version), time.monotonic()
            if newest == self._newest_row and now - self._window_read_at < FEED_WINDOW_EVERY_S:
                return  # nothing newer
            self._newest_row, self._window_read_at = newest, now
            rows = catalogue.vector_rows_after(session, state.version, max(0, self.watermark - FEED_WINDOW))
            fresh = [row for row in rows if row not in self._seen_rows]
            for start in range(0, len(fresh), 10_000):
                chunk = fresh[start : start + 10_000]
                ids, matrix = catalogue.vectors_by_rows(session, chunk)
                state.delta_facts.update(catalogue.item_facts(session, ids))  # before the rows can be found
                state.live.add(ids, matrix)
                self._seen_rows.update(chunk)
        if rows:
            self.watermark = max(self.watermark, rows[-1])
            floor = self.watermark - FEED_WINDOW
            self._seen_rows = {row for row in self._seen_rows if row > floor}

    def _follow_deletions(self) -> None:
        with session_scope(self.database_url) as session:
            deleted = catalogue.deleted_since(session, self._deleted_since)
        if deleted:
            self.mark_deleted([item for item, _ in deleted])
            self._deleted_since = max(stamp for _, stamp in deleted)

    def mark_deleted(self, item_ids: Sequence[str]) -> None:
        """Honoured at once by every channel: searches and table lookups skip these ids."""
        self.state.live.deleted.update(item_ids)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the configured vector store and load the serving snapshot: a StoreError (the store does not
        answer, the snapshot's collection is missing or of another dimension) stops the start with its reason."""
        self.store()
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
    """The recall channels' questions (recall.sources.RecallSources) answered from a ServingState, in its
    rows (LiveIndex: the snapshot's positions, then the delta's); see evaluation.recall_channels for the
    harness's dense counterpart. Snapshot items are answered from memory; the database is asked only about
    items written after the snapshot."""

    def __init__(
        self,
        state: ServingState,
        database_url: str,
        *,
        in_memory_only: bool = False,
        history_times: dict[str, float] | None = None,
        filtered: AllowedRows | None = None,
    ) -> None:
        self.state, self.database_url, self.in_memory_only = state, database_url, in_memory_only
        # a query-time filter's rows (recall.filters): the only ones any channel returns, applied inside each
        # search, not to a list found without it; `allowed` is its boolean mask over rows (snapshot rows,
        # then the delta's)
        self.filtered = filtered
        self.allowed = filtered.mask if filtered is not None else None
        self.live = state.live
        self.base = self.live.base  # rows from here on are newer than the snapshot's tables
        self.row, self.item = self.live.row, self.live.item  # item id <-> row
        self.blocked = self.live.blocked_rows()  # deleted, or re-encoded since the snapshot
        self._db_tags: dict[str, list[str]] = {}
        self._history_vectors: tuple[bytes, np.ndarray] | None = None  # the last rows asked, their vectors
        self._user_vector: tuple[tuple[bytes, str | None], np.ndarray | None] | None = None  # the last asked
        self.history_times = history_times or {}  # item -> unix seconds of the user's interaction, when known

    def _table_neighbors(
        self, row: int, n: int, exclude: np.ndarray, *, complete: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Up to n neighbours from the v2v table plus the delta (items newer than the table), or None when
        the table cannot answer (no table, a row newer than it; with `complete`, fewer than n left)."""
        state = self.state
        if row >= self.base or state.v2v_rows is None:
            return None
        rows, scores = state.v2v_rows[row].astype(np.int64), state.v2v_scores[row]  # type: ignore[index]  # a pair
        keep = rows >= 0
        if len(exclude):
            keep &= ~member_mask(rows, exclude)
        if self.blocked:  # deleted or re-encoded since the snapshot: usually none
            keep &= np.fromiter((r not in self.blocked for r in rows.tolist()), bool, len(rows))
        rows, scores = rows[keep], scores[keep].astype(np.float64)
        if complete and len(rows) < n and state.v2v_rows.shape[1] < self.base - 1:
            return None  # the table row is too short for this request
        if not self.live.has_delta:  # table rows are sorted already; no newer items to fold in
            return rows[:n], scores[:n]
        skip = self.blocked.union(exclude.tolist(), [row])
        fresh, fresh_scores = self.live.search_delta(self.live.row_vector(row), n, exclude=skip)
        return top_rows(np.concatenate([rows, fresh]), np.concatenate([scores, fresh_scores]), n)

    def neighbors(self, row: int, n: int, *, complete: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """From the v2v table when the row is the snapshot's, else live ANN; with `complete`, live ANN also
        when the table row holds fewer than n (a k wider than the table)."""
        found = None if self.allowed is not None else self._table_neighbors(row, n, NO_ROWS, complete=complete)
        if found is not None:
            return found
        return self.search(self.live.row_vector(row), n, np.array([row], np.int64))

    def neighbor_lists(self, rows: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Several rows' neighbours (index.v2v.stack_neighbors' shape): in one gather from the v2v table
        when it alone answers for all of them (snapshot rows, nothing added or removed since)."""
        state = self.state
        if (
            state.v2v_rows is not None
            and self.allowed is None
            and not self.blocked
            and not self.live.has_delta
            and len(rows)
            and max(rows) < self.base
        ):
            at = np.asarray(rows, np.int64)
            return state.v2v_rows[at, :n], state.v2v_scores[at, :n]  # type: ignore[index]  # written as a pair
        return stack_neighbors([self.neighbors(row, n) for row in rows])

    def summed_neighbors(
        self, triggers: Sequence[int], weights: np.ndarray, n: int, exclude: np.ndarray
    ) -> Ranked | None:
        """Under a selective filter (a scan of its rows): the v2v score of every allowed item without
        each trigger's top-n cut, sum over triggers of w_t * <t, j> = <sum of w_t * t, j>, so one search for
        all the triggers instead of one each; provenance, as from the lists: the trigger that contributed
        most (the latest on ties). None elsewhere: the v2v table's lists cost less than any search."""
        if self.filtered is None or not self.filtered.exact or not len(triggers):
            return None
        at = np.asarray(triggers, np.int64)
        vectors = self._gather(at)  # (t, d)
        query = np.asarray(weights, np.float32) @ vectors
        skip = self._blocked_array(np.union1d(np.asarray(exclude, np.int64), at))
        rows, scores = self.filtered.search(query, n, skip)[0]
        if not len(rows):
            return Ranked.empty()
        found = self._gather(rows)  # (n, d)
        contributions = np.asarray(weights, np.float64)[:, None] * (vectors @ found.T)  # (t, n)
        return Ranked(rows, scores.astype(np.float64), at[np.argmax(contributions, axis=0)])

    def _blocked_array(self, exclude: np.ndarray = NO_ROWS) -> np.ndarray:
        """Sorted rows never returned: deleted or re-encoded since the snapshot, and `exclude`."""
        blocked = np.fromiter(self.blocked, np.int64, len(self.blocked)) if self.blocked else NO_ROWS
        return np.union1d(blocked, np.asarray(exclude, np.int64)) if len(exclude) or len(blocked) else NO_ROWS

    def nearest_each(
        self, rows: Sequence[int], vectors: np.ndarray, n: Sequence[int], exclude: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Nearest items to each history row (PinnerSage medoids), n[i] for the i-th and none that an earlier
        one found: its cached v2v row where that answers, else a search; under a selective filter, one scan
        for them all instead of one each."""
        if self.filtered is not None and self.filtered.exact and len(rows):
            # each list asks for its own count plus every earlier one's, which is all an earlier list can take
            lists = self.filtered.search(np.atleast_2d(vectors), np.cumsum(n), self._blocked_array(exclude))
            out, taken = [], np.zeros(0, np.int64)
            for (found, scores), wanted in zip(lists, n, strict=True):
                keep = ~member_mask(found, taken)
                found, scores = found[keep][:wanted], scores[keep][:wanted]
                out.append((found, scores))
                taken = np.concatenate([taken, found])
            return out
        out = []
        for row, vector, wanted in zip(rows, vectors, n, strict=True):
            cached = None if self.allowed is not None else self._table_neighbors(row, wanted, exclude, complete=True)
            answer = cached if cached is not None else self.search(vector, wanted, exclude)
            out.append(answer)
            exclude = np.concatenate([exclude, answer[0]])
        return out

    def cluster_mates(self, triggers: Sequence[tuple[int, float]], n: int, exclude: np.ndarray = NO_ROWS) -> Ranked:
        table = self.state.clusters
        if table is None or self.live.snapshot is None:
            return Ranked.empty()
        rows, weights, clusters, queries = [], [], [], []
        for row, weight in triggers:
            rows.append(row)
            weights.append(weight)
            newer = row >= self.base  # newer than the table: its vector's cluster and its vector
            query = self.live.row_vector(row) if newer else None
            queries.append(query)
            clusters.append(table.assign(query) if query is not None else int(table.assignment[row]))
        if self.filtered is not None and triggers:
            # a filter may leave the triggers' clusters (nearly) empty: the latest trigger also reads the
            # clusters nearest to it, until they hold enough allowed items for n
            latest, weight = triggers[0]
            query = self.live.row_vector(latest)
            for cluster in self._widened_clusters(query, set(clusters), n + len(exclude)):
                rows.append(latest)
                weights.append(weight)
                clusters.append(cluster)
                queries.append(query)
        # the table's members are snapshot rows: an item re-encoded since is listed under its old row (and
        # reported under its new one), so it is skipped when its new row is excluded
        moved = self.live.moved_rows()
        excluded = set(exclude.tolist()) | set(rows)
        skip = (self.blocked - moved.keys()) | {old for old, new in moved.items() if new in excluded}
        found = cluster_recall(
            table,
            self.live.snapshot.vectors,
            list(zip(rows, weights, strict=True)),
            k=n,
            trigger_clusters=clusters,
            queries=queries,
            exclude=np.concatenate([exclude, np.fromiter(skip, np.int64, len(skip))]),
            prior=self.state.popularity,
            allowed=None if self.allowed is None else self.allowed[: self.base],
            # under a selective filter, each cluster's allowed rows (kept with the filter), not all its members
            cluster_rows=self.filtered.cluster_rows(table) if self.filtered is not None else None,
            prior_max=1.0,  # popularity_prior's largest value (0 when nothing is popular: a looser bound)
        )
        if moved:
            found = Ranked(
                np.array([moved.get(r, r) for r in found.rows.tolist()], np.int64), found.scores, found.trigger
            )
        return found

    def _widened_clusters(self, query: np.ndarray, taken: set[int], wanted: int) -> list[int]:
        """Clusters nearest to the query, beyond `taken`, until the filter allows `wanted` items in all."""
        table, filtered = self.state.clusters, self.filtered
        assert table is not None and filtered is not None
        per_cluster = filtered.snapshot.cluster_counts(table) if filtered.snapshot is not None else None
        if per_cluster is None:
            return []
        have = int(sum(per_cluster[c] for c in taken))
        out = []
        for cluster in np.argsort(-(table.centroids @ query), kind="stable").tolist():
            if have >= wanted:
                break
            if cluster in taken or not per_cluster[cluster]:
                continue
            out.append(cluster)
            have += int(per_cluster[cluster])
        return out

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) float32 vectors of non-empty rows: one gather when all are the snapshot's."""
        if self.live.snapshot is not None and int(rows.max()) < self.base:  # one gather, not a copy per row
            return np.asarray(self.live.snapshot.vectors[rows], np.float32)
        return np.stack([self.live.row_vector(r) for r in rows.tolist()])

    def content_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the rows, in order."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, self.live.dim or 1), np.float32)
        key = rows.tobytes()  # the user tower and multi-interest both read the history's vectors
        if self._history_vectors is not None and self._history_vectors[0] == key:
            return self._history_vectors[1]
        vectors = self._gather(rows)
        vectors.flags.writeable = False  # shared by the callers
        self._history_vectors = (key, vectors)
        return vectors

    def user_vector(self, history: np.ndarray, user: str | None) -> np.ndarray | None:
        """The user tower over the history (the last answer kept: personal and u2i2i both ask for it)."""
        key = (np.asarray(history, np.int64).tobytes(), user)
        if self._user_vector is not None and self._user_vector[0] == key:
            return self._user_vector[1]
        vector = self._user_vector_of(history, user)
        self._user_vector = (key, vector)
        return vector

    def _user_vector_of(self, history: np.ndarray, user: str | None) -> np.ndarray | None:
        vectors = self.content_vectors(history)
        if not len(vectors):
            return None
        tower = self.state.user_tower
        if isinstance(tower, SeqTowerNumpy):  # the user's active interests, (k, d)
            items = [self.item(r) for r in history.tolist()]
            times = [self.history_times.get(i) for i in items]
            gaps = gap_buckets(np.array(times, np.float64)) if all(t is not None for t in times) else None
            return tower(
                vectors,
                id_key(user) if user is not None else None,
                gaps=gaps,
                tag_pref=tower.tag_preferences(self.tag_names(history)),
                user=user,
            )
        if tower is not None:
            return tower(vectors, id_key(user) if user is not None else None)
        weights = np.power(0.9, np.arange(len(vectors) - 1, -1, -1))[:, None]  # no G yet: recency-weighted mean
        mean = (weights * vectors).sum(axis=0)
        return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)

    def search(self, vector: np.ndarray, n: int, exclude: np.ndarray = NO_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """Nearest rows to a vector, or to several (interests): each row scored by its best one."""
        queries = np.atleast_2d(vector)
        if self.filtered is not None and self.filtered.exact:  # a selective filter: scan its rows
            found = self.filtered.search(queries, n, self._blocked_array(exclude))
        else:
            skip = set(np.asarray(exclude).tolist())
            found = [self.live.search_rows(query, n, exclude=skip, allowed=self.allowed) for query in queries]
        if len(found) == 1:
            return found[0]
        best: dict[int, float] = {}
        for rows, scores in found:
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
                best[row] = max(best.get(row, -np.inf), score)
        return top_rows(np.fromiter(best, np.int64, len(best)), np.fromiter(best.values(), np.float64, len(best)), n)

    def sequential(self, history: np.ndarray, n: int, exclude: np.ndarray = NO_ROWS) -> Ranked | None:
        """The sequential model's next items after the history (None: the snapshot has no such model, or it
        knows none of the history). It scores the snapshot's rows: an item re-encoded since is scored under
        its old row and reported under its new one; items newer than the snapshot are not in the model."""
        model = self.state.sequential
        if model is None:
            return None
        moved = self.live.moved_rows()
        back = {new: old for old, new in moved.items()}
        rows = np.array([back.get(r, r) for r in np.asarray(history).tolist()], np.int64) if back else history
        vector = model.user_vector(rows[rows < self.base])
        if vector is None:
            return None
        blocked = np.zeros(len(model), bool)
        excluded = np.asarray(exclude, np.int64)
        blocked[excluded[excluded < len(model)]] = True
        excluded_moved = set(excluded.tolist()) if moved else set()  # once, not per moved item
        skip = (self.blocked - moved.keys()) | {old for old, new in moved.items() if new in excluded_moved}
        blocked[[r for r in skip if r < len(model)]] = True
        if self.allowed is not None:
            blocked |= ~self.allowed[: len(model)]
        found, scores = model.search(vector, n, blocked)
        if moved:
            found = np.array([moved.get(r, r) for r in found.tolist()], np.int64)
        return Ranked.of(found, scores)

    def ranking(self, kind: str, n: int, exclude: np.ndarray = NO_ROWS) -> Ranked | None:
        """The best n rows of a non-personalised ranking (index.rankings) that are not excluded, blocked or
        filtered out (None: the snapshot has no rankings). `latest` lists items encoded since the snapshot
        first, newest first: they became ready after every item in it."""
        rankings = self.state.rankings
        if rankings is None or kind not in rankings:
            return None
        order, scores = rankings[kind]
        if kind == "latest" and self.live.has_delta:
            fresh = np.arange(self.live.base + len(self.live.delta_ids) - 1, self.live.base - 1, -1, dtype=np.int64)
            order = np.concatenate([fresh, order])
            scores = 1.0 / (1.0 + np.arange(len(order), dtype=np.float64))
        skip = self._blocked_array(exclude)
        picked: list[np.ndarray] = []
        found, start, chunk = 0, 0, max(4 * n, 1024)
        while found < n and start < len(order):  # a selective filter reads further down the ranking
            at = np.arange(start, min(start + chunk, len(order)))
            rows = np.asarray(order[at], np.int64)
            keep = ~member_mask(rows, skip) if len(skip) else np.ones(len(rows), bool)
            if self.allowed is not None:
                covered = rows < len(self.allowed)
                keep &= covered & self.allowed[np.where(covered, rows, 0)]
            picked.append(at[keep])
            found += int(keep.sum())
            start, chunk = start + chunk, chunk * 2
        at = np.concatenate(picked)[:n] if picked else np.zeros(0, np.int64)
        return Ranked.of(np.asarray(order[at], np.int64), np.asarray(scores[at], np.float64))

    def prepare(self, rows: np.ndarray) -> None:
        """Fetch, in one query, the tags of candidates the snapshot cannot answer for (rows newer than it)."""
        rows = np.asarray(rows, np.int64)
        if self.state.meta is not None:  # the snapshot's own rows are answered from memory
            rows = rows[rows >= self.base]
        items = {self.item(r) for r in rows.tolist()}
        known = self.state.delta_facts
        self._db_tags.update({i: known[i][1] for i in items if i in known and i not in self._db_tags})
        missing = [i for i in items if i not in self._db_tags]
        if missing and self.in_memory_only:
            raise NeedsDatabase(f"tags of {len(missing)} items newer than the snapshot")
        if missing:
            with session_scope(self.database_url) as session:
                self._db_tags.update({i: [] for i in missing} | catalogue.tags_of(session, missing))

    def categories(self, rows: np.ndarray) -> Sequence[Collection]:
        """Each row's first-level tags (the rerank's diversity categories): ints for the snapshot's rows
        (ItemMeta.top_level_sets), mapped the same way for rows read from the database."""
        rows, meta, base = np.asarray(rows, np.int64), self.state.meta, self.base
        if meta is None:
            return [frozenset(self._db_categories(r)) for r in rows.tolist()]
        out = meta.top_level_sets(np.minimum(rows, base - 1)) if base else [frozenset()] * len(rows)
        for at in np.flatnonzero(rows >= base).tolist():
            # a tag the snapshot never saw stays a string: it differs from every numbered one
            out[at] = frozenset(meta.top_level_index.get(t, t) for t in self._db_categories(int(rows[at])))  # type: ignore[arg-type]
        return out

    def tag_names(self, rows: np.ndarray) -> list[list[str]]:
        """Each row's tags (the sequence tower's tag preferences read their first level)."""
        meta, base = self.state.meta, self.base
        return [
            meta.tags(r) if meta is not None and r < base else self._db_tags.get(self.item(r)) or []
            for r in np.asarray(rows).tolist()
        ]

    def _db_categories(self, row: int) -> list[str]:
        return [t.split("/")[0] for t in self._db_tags.get(self.item(row)) or []]

    def listing(self, rows: np.ndarray, scores: np.ndarray) -> list[dict]:
        """[{"id", "score", "title"}] for ranked rows (what /v1/similar and /v1/search list)."""
        listed, listed_scores = np.asarray(rows).tolist(), np.asarray(scores).tolist()
        titles = self.titles(listed)
        return [
            {"id": self.item(r), "score": s, "title": titles.get(r)} for r, s in zip(listed, listed_scores, strict=True)
        ]

    def titles(self, rows: Sequence[int]) -> dict[int, str | None]:
        meta, found = self.state.meta, {}
        if meta is not None:
            known = [r for r in rows if r < self.base]
            found = dict(zip(known, meta.titles(known), strict=True))
        facts = self.state.delta_facts
        for row in rows:
            if row not in found and self.item(row) in facts:
                found[row] = facts[self.item(row)][0]
        missing = [r for r in rows if r not in found]
        if missing and self.in_memory_only:
            raise NeedsDatabase(f"titles of {len(missing)} items newer than the snapshot")
        if missing:
            with session_scope(self.database_url) as session:
                by_id = catalogue.titles(session, [self.item(r) for r in missing])
            found.update({r: by_id.get(self.item(r)) for r in missing})
        return found


def similar_to(
    serving: ServingIndex,
    item_id: str,
    k: int,
    channel: str = "v2v",
    *,
    recall_filter: RecallFilter | None = None,
    in_memory_only: bool = False,
) -> dict:
    """`{"item_id", "channel", "results": [{"id", "score", "title"}], "short_by"}`, never the item itself;
    recall_filter: the query-time filter (recall.filters), applied inside the search.

    in_memory_only: raise NeedsDatabase instead of reading the database (for callers on an event loop)."""
    state = serving.state
    url = serving.database_url
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
    recall_filter = recall_filter or RecallFilter()
    filtered = allowed_rows(state, recall_filter, url, in_memory_only=in_memory_only)
    sources = ServiceSources(state, url, in_memory_only=in_memory_only, filtered=filtered)
    row = sources.row(item_id)
    if row is None:  # deleted while this request ran
        raise UnknownItem(f"unknown item id {item_id!r}")
    excluded = {r for r in map(sources.row, recall_filter.exclude_ids) if r is not None}
    wanted = k + len(excluded)  # asked for beyond k, then dropped
    if channel == "cluster":
        found = sources.cluster_mates([(row, 1.0)], wanted)
        rows, scores = found.rows, found.scores
    else:
        rows, scores = sources.neighbors(row, wanted, complete=True)  # k wider than the v2v table: live search
    if excluded:
        keep = ~np.isin(rows, np.fromiter(excluded, np.int64, len(excluded)))
        rows, scores = rows[keep][:k], scores[keep][:k]
    described = recall_filter.answer_part(filtered.count if filtered is not None else None)
    return {
        "item_id": item_id,
        "channel": channel,
        "results": sources.listing(rows, scores),
        "short_by": max(0, k - len(rows)),
        "filter": described,
    }
