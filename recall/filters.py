"""Query-time filters for /v1/recall, /v1/similar and the CLI: compiled once per request to a boolean mask
over the serving rows (the snapshot's, then the delta's), which every channel applies inside its search.

A filter on the catalogue (tags, creation time, `new_only`) is the same for every user, so its snapshot
part is cached on the serving state (replaced whole on a swap, so the cache never outlives its snapshot),
with the vectors of the rows it allows when they are few: a selective filter is then answered by a scan of
those rows (quantised codes order them, exact scores decide) instead of an ANN graph walk that finds too few
of them (the pre-filtering that Qdrant and Milvus switch to below a cardinality threshold). Rows newer than
the snapshot are checked against the database per request (they are few). `exclude_ids` is per request and
never cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import faiss
import numpy as np

from mmrecall.index.ranked import member_mask, top_rows

# at most this many allowed rows: scanned over their gathered vectors (a 2% filter at 1M items x 256
# dims is 20k rows, 10 MB in half precision, about 0.2 ms a query); more: the ANN index's ID selector
EXACT_MAX_ROWS = 60_000
CACHE_BYTES = 256 * 2**20  # the cached masks and gathered vectors of one serving state, at most
RESCORE_MARGIN = 32  # rows beyond n that the half-precision scan passes on to the exact rescoring
# A filter used this often, over at least FAST_MIN_ROWS rows, gets 4-bit product-quantisation codes in the
# background (faiss's fast scan: 4 dims a code, in SIMD registers), which then order its rows instead of the
# half-precision scan: at 20k rows x 256 dims, 0.07 ms a query against 0.32, and with FAST_SHORTLIST x the
# rows rescored exactly, recall@100 0.995 of the exact scan (bench perf reports it). Training the codes
# takes about 0.5 s, which a one-off filter (a moving time bound) should not pay, nor wait for.
FAST_AFTER_USES = 2
FAST_MIN_ROWS = 4096
FAST_SHORTLIST = 4
FAST_TRAIN_ROWS = 8192  # at most about this many rows train the codes


class FilterError(ValueError):
    """A filter the serving snapshot cannot answer (HTTP 409 with the reason)."""


def tag_matches(tag: str, wanted: str) -> bool:
    """A level-1 filter (`Comedy`) matches its level-2 tags (`Comedy/stand-up`); a level-2 one only itself."""
    return tag == wanted or tag.startswith(wanted + "/")


@dataclass(frozen=True)
class RecallFilter:
    include_tags: tuple[str, ...] = ()  # an item passes with at least one of them (none given: every item)
    exclude_tags: tuple[str, ...] = ()  # and with none of these
    exclude_ids: tuple[str, ...] = ()
    created_after: float | None = None  # unix seconds, exclusive
    created_before: float | None = None
    new_only: bool = False  # items without behaviour yet (no interaction counted at the last reindex)

    @property
    def active(self) -> bool:
        return bool(self.catalogue_part or self.exclude_ids)

    @property
    def catalogue_part(self) -> tuple:
        """What the filter says about the catalogue alone (the cache key); empty: nothing."""
        if not (self.include_tags or self.exclude_tags or self.new_only) and self._no_time:
            return ()
        return (
            tuple(sorted(set(self.include_tags))),
            tuple(sorted(set(self.exclude_tags))),
            self.created_after,
            self.created_before,
            self.new_only,
        )

    @property
    def _no_time(self) -> bool:
        return self.created_after is None and self.created_before is None

    @property
    def reads_time(self) -> bool:
        return not self._no_time

    @property
    def reads_item_facts(self) -> bool:
        """Whether it asks about items' tags or creation times (what rows newer than the snapshot are read for)."""
        return bool(self.include_tags or self.exclude_tags) or self.reads_time

    def passes(self, tags: Sequence[str], created_at: float | None) -> bool:
        """One item's tags and creation time against the catalogue part (rows newer than the snapshot)."""
        if self.include_tags and not any(tag_matches(t, w) for t in tags for w in self.include_tags):
            return False
        if any(tag_matches(t, w) for t in tags for w in self.exclude_tags):
            return False
        if not self._no_time:
            if created_at is None:
                return False
            if self.created_after is not None and not created_at > self.created_after:
                return False
            if self.created_before is not None and not created_at < self.created_before:
                return False
        return True

    def answer_part(self, allowed: int | None) -> dict | None:
        """The `filter` field of an answer: what was asked and how many items it allowed (None: no filter)."""
        return {**self.describe(), "allowed": allowed} if self.active else None

    def describe(self) -> dict:
        return {
            key: value
            for key, value in (
                ("include_tags", list(self.include_tags)),
                ("exclude_tags", list(self.exclude_tags)),
                ("exclude_ids", len(self.exclude_ids)),
                ("created_after", self.created_after),
                ("created_before", self.created_before),
                ("new_only", self.new_only),
            )
            if value
        }


NO_FILTER = RecallFilter()


@dataclass
class SnapshotRows:
    """A catalogue filter's answer for a snapshot's rows: the mask, and the allowed rows' vectors when few."""

    mask: np.ndarray  # (base,) bool
    rows: np.ndarray  # allowed rows, ascending
    vectors: np.ndarray | None  # (len(rows), d) float32, gathered when len(rows) <= EXACT_MAX_ROWS
    # the gathered vectors in half precision for faiss's scan: it reads half the bytes of a float scan, which
    # is what bounds a single query's time; its order is final after an exact rescoring of the best
    codes: faiss.Index | None = None

    fast: faiss.Index | None = None  # the fast-scan codes, once built (FAST_AFTER_USES)

    _cluster_counts: np.ndarray | None = None
    _cluster_members: list[np.ndarray] | None = None
    _uses: int = 0
    _fast_started: bool = False

    @classmethod
    def gathered(cls, mask: np.ndarray, vectors: np.ndarray) -> SnapshotRows:
        """The allowed rows of `mask` with their vectors (float32, (len(rows), d)) and their codes."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        codes = faiss.IndexScalarQuantizer(vectors.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        codes.add(vectors)
        return cls(mask, np.flatnonzero(mask), vectors, codes)

    def scan(self, queries: np.ndarray, wanted: int) -> tuple[np.ndarray, int]:
        """(q, m) positions in `rows` in about the best order for each query, -1 padded, and how many to
        rescore per row wanted (m = that many x `wanted`, at most every row): from the fast-scan codes once a
        background thread has built them (this filter is in use), else the half-precision ones; the caller
        rescores them exactly."""
        self._uses += 1
        if self._uses >= FAST_AFTER_USES and not self._fast_started and self.takes_fast_codes:
            self._fast_started = True  # two requests racing here build it twice, harmlessly
            threading.Thread(target=self._build_fast, name="filter-fast-scan", daemon=True).start()
        fast = self.fast
        if fast is not None:
            return fast.search(queries, min(len(self.rows), FAST_SHORTLIST * wanted))[1], FAST_SHORTLIST
        assert self.codes is not None
        return self.codes.search(queries, wanted)[1], 1

    @property
    def takes_fast_codes(self) -> bool:
        """Whether the filter gets fast-scan codes once in use: enough rows, and 4 dims to a code."""
        return self.vectors is not None and len(self.rows) >= FAST_MIN_ROWS and self.vectors.shape[1] % 4 == 0

    def in_use(self, timeout: float = 60.0) -> None:
        """The filter as a serving process has it after its first requests (benchmarks measure that steady
        state): with its fast-scan codes where it takes them, waiting up to `timeout` for the build."""
        if self.vectors is None:
            return
        query = np.zeros((1, self.vectors.shape[1]), np.float32)
        while self._uses < FAST_AFTER_USES:
            self.scan(query, 1)
        deadline = time.time() + timeout
        while self.takes_fast_codes and self.fast is None and time.time() < deadline:
            time.sleep(0.05)

    def _build_fast(self) -> None:
        assert self.vectors is not None
        # one OpenMP thread, for this thread only: the requests keep the cores (a team of spinning OpenMP
        # threads beside busy API processes stalled them for seconds)
        faiss.omp_set_num_threads(1)
        d = self.vectors.shape[1]
        fast = faiss.index_factory(d, f"PQ{d // 4}x4fs", faiss.METRIC_INNER_PRODUCT)
        step = max(1, len(self.vectors) // FAST_TRAIN_ROWS)  # 16 centroids per sub-quantiser need few rows
        fast.train(np.ascontiguousarray(self.vectors[::step]))
        fast.add(self.vectors)
        self.fast = fast  # one reference assignment: a request sees the old codes or the new, whole

    @property
    def nbytes(self) -> int:
        gathered = self.vectors.nbytes * 3 // 2 if self.vectors is not None else 0  # float32 and half codes
        by_cluster = self.rows.nbytes if self._cluster_members is not None else 0
        fast = len(self.rows) * self.vectors.shape[1] // 8 if self.vectors is not None and self._fast_started else 0
        return self.mask.nbytes + self.rows.nbytes + gathered + by_cluster + fast

    def cluster_counts(self, table) -> np.ndarray:
        """(clusters,) allowed rows per cluster of the snapshot's table (computed once, then kept)."""
        if self._cluster_counts is None:
            assignment = np.asarray(table.assignment[: len(self.mask)])
            self._cluster_counts = np.bincount(assignment[self.mask], minlength=len(table.centroids))
        return self._cluster_counts

    def cluster_members(self, table) -> list[np.ndarray]:
        """Per cluster of the snapshot's table, its allowed rows, ascending (computed once, then kept): the
        cluster channel reads these few instead of testing every member of each cluster against the mask."""
        if self._cluster_members is None:
            clusters = np.asarray(table.assignment)[self.rows]
            order = np.argsort(clusters, kind="stable")  # rows ascending within each cluster
            cuts = np.concatenate([[0], np.cumsum(self.cluster_counts(table))])
            by_cluster = self.rows[order]
            self._cluster_members = [by_cluster[cuts[c] : cuts[c + 1]] for c in range(len(table.centroids))]
        return self._cluster_members


@dataclass
class FilterCache:
    """Catalogue filters' snapshot answers, least recently used dropped past CACHE_BYTES."""

    entries: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple, build) -> SnapshotRows:
        with self.lock:
            found = self.entries.get(key)
            if found is not None:
                self.entries.move_to_end(key)
                return found
        built = build()  # outside the lock: two requests may build the same entry once each, harmlessly
        with self.lock:
            self.entries[key] = built
            while sum(e.nbytes for e in self.entries.values()) > CACHE_BYTES and len(self.entries) > 1:
                self.entries.popitem(last=False)
        return built


@dataclass
class AllowedRows:
    """One request's filter over the serving rows: the mask every channel applies, and a scan of the allowed
    rows when they are few (SnapshotRows.scan: quantised codes order them, exact scores decide), the rows newer
    than the snapshot scanned exactly beside it."""

    mask: np.ndarray  # (rows,) bool: snapshot rows, then the delta's
    snapshot: SnapshotRows | None  # None: the catalogue part allows every snapshot row
    delta_rows: np.ndarray  # allowed rows newer than the snapshot
    delta_vectors: np.ndarray  # (len(delta_rows), d)

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def exact(self) -> bool:
        """Whether searches scan the allowed rows' vectors instead of the ANN index."""
        return self.snapshot is not None and self.snapshot.vectors is not None

    def cluster_rows(self, table) -> list[np.ndarray] | None:
        """Per cluster of the table, the allowed snapshot rows when this filter is scanned (few), else None."""
        return self.snapshot.cluster_members(table) if self.exact else None  # type: ignore[union-attr]  # exact

    @cached_property
    def _cleared(self) -> np.ndarray:
        """Positions in the snapshot's allowed rows whose mask is clear (exclude_ids clear it after the
        snapshot part was cached): usually none."""
        assert self.snapshot is not None
        return np.flatnonzero(~self.mask[self.snapshot.rows])

    def search(
        self, queries: np.ndarray, n: int | Sequence[int] | np.ndarray, exclude: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (q, d): the n best allowed rows not excluded (rows, exact scores), best first; n may
        differ by query (one scan still serves them all)."""
        snapshot = self.snapshot
        assert snapshot is not None and snapshot.vectors is not None and snapshot.codes is not None
        queries = np.atleast_2d(queries).astype(np.float32)
        exclude = np.asarray(exclude, np.int64)
        rows = snapshot.rows
        at = np.minimum(np.searchsorted(rows, exclude), max(len(rows) - 1, 0))  # excluded rows' positions
        skipped = np.union1d(self._cleared, at[rows[at] == exclude] if len(rows) else at[:0])
        # the quantised scan orders the rows; enough more than n that the skipped ones and a near tie at the
        # cut cannot push an item out, then exact float scores decide
        counts = np.broadcast_to(np.asarray(n, np.int64), (len(queries),))
        wanted = np.minimum(len(rows), counts + len(skipped) + RESCORE_MARGIN)
        found, shortlist = (
            snapshot.scan(queries, int(wanted.max())) if len(rows) else (np.zeros((len(queries), 0), int), 1)
        )
        delta_scores = queries @ self.delta_vectors.T if len(self.delta_rows) else None
        if delta_scores is not None:
            delta_scores[:, ~self.mask[self.delta_rows] | member_mask(self.delta_rows, exclude)] = -np.inf
        out = []
        for i, query in enumerate(queries):
            positions = found[i][: shortlist * wanted[i]]
            positions = positions[positions >= 0]
            positions = positions[~member_mask(positions, skipped)] if len(skipped) else positions
            candidates, scores = rows[positions], snapshot.vectors[positions] @ query
            if delta_scores is not None:
                candidates = np.concatenate([candidates, self.delta_rows])
                scores = np.concatenate([scores, delta_scores[i]])
            best, best_scores = top_rows(candidates, scores.astype(np.float64), int(counts[i]))
            finite = np.isfinite(best_scores)
            out.append((best[finite], best_scores[finite]))
        return out
