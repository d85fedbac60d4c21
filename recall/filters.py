"""Query-time filters for /v1/recall, /v1/similar and the CLI: compiled once per request to a boolean mask
over the serving rows (the snapshot's, then the delta's), which every channel applies inside its search.

A filter on the catalogue (tags, creation time, `new_only`) is the same for every user, so its snapshot
part is cached on the serving state (replaced whole on a swap, so the cache never outlives its snapshot),
with the vectors of the rows it allows when they are few: a selective filter is then answered by one exact
scan of those rows instead of an ANN graph walk that finds too few of them (the pre-filtering that Qdrant
and Milvus switch to below a cardinality threshold). Rows newer than the snapshot are checked against the
database per request (they are few). `exclude_ids` is per request and never cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mmrecall.index.ranked import member_mask, top_rows

# at most this many allowed rows: searched exactly over their gathered vectors (at 1M items x 256 dims a
# 2% filter is 20k rows, 20 MB, about 1 ms per query); more: faiss's in-search ID selector, widened
EXACT_MAX_ROWS = 60_000
CACHE_BYTES = 256 * 2**20  # the cached masks and gathered vectors of one serving state, at most


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

    _cluster_counts: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + self.rows.nbytes + (self.vectors.nbytes if self.vectors is not None else 0)

    def cluster_counts(self, table) -> np.ndarray:
        """(clusters,) allowed rows per cluster of the snapshot's table (computed once, then kept)."""
        if self._cluster_counts is None:
            assignment = np.asarray(table.assignment[: len(self.mask)])
            self._cluster_counts = np.bincount(assignment[self.mask], minlength=len(table.centroids))
        return self._cluster_counts


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
    rows when they are few. The scan is arithmetic-bound (20k rows x 256 dims is 10 MFLOP a query), and one
    matrix product over many queries runs faster per query than one product each, so the v2v triggers are
    scored together (`score_rows`), and a history row asked about again (a multi-interest medoid that is
    also a trigger) is answered from its kept scores (`row_neighbors`)."""

    mask: np.ndarray  # (rows,) bool: snapshot rows, then the delta's
    snapshot: SnapshotRows | None  # None: the catalogue part allows every snapshot row
    delta_rows: np.ndarray  # allowed rows newer than the snapshot
    delta_vectors: np.ndarray  # (len(delta_rows), d)
    _row_scores: dict[int, np.ndarray] = field(default_factory=dict)  # query row -> scores over scanned_rows

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def exact(self) -> bool:
        """Whether searches scan the allowed rows' vectors instead of the ANN index."""
        return self.snapshot is not None and self.snapshot.vectors is not None

    @property
    def scanned_rows(self) -> np.ndarray:
        """The rows a scan scores, in the order of its scores: the snapshot's allowed rows, then the delta's."""
        assert self.snapshot is not None
        return np.concatenate([self.snapshot.rows, self.delta_rows]) if len(self.delta_rows) else self.snapshot.rows

    def _scores(self, queries: np.ndarray) -> np.ndarray:
        """(q, scanned) inner products, -inf where the mask is clear (exclude_ids clear it after the snapshot
        part was cached). Snapshot and delta rows are multiplied apart: their vectors are never copied."""
        snapshot = self.snapshot
        assert snapshot is not None and snapshot.vectors is not None
        queries = np.atleast_2d(queries).astype(np.float32)
        scores = queries @ snapshot.vectors.T
        if len(self.delta_rows):
            scores = np.concatenate([scores, queries @ self.delta_vectors.T], axis=1)
        scores[:, ~self.mask[self.scanned_rows]] = -np.inf
        return scores

    def _best(self, scores: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The n best scanned rows by one query's scores (modified in place), excluded rows left out."""
        snapshot_rows = self.snapshot.rows  # type: ignore[union-attr]  # a scan has a snapshot part
        if len(exclude):  # positions of the excluded rows: a lookup in the ascending snapshot rows, not a mask
            at = np.minimum(np.searchsorted(snapshot_rows, exclude), max(len(snapshot_rows) - 1, 0))
            scores[at[snapshot_rows[at] == exclude] if len(snapshot_rows) else at[:0]] = -np.inf
            if len(self.delta_rows):
                scores[len(snapshot_rows) + np.flatnonzero(member_mask(self.delta_rows, exclude))] = -np.inf
        found, found_scores = top_rows(self.scanned_rows, scores, n)
        finite = np.isfinite(found_scores)
        return found[finite], found_scores[finite]

    def search(self, queries: np.ndarray, n: int, exclude: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (q, d): the n best allowed rows not excluded (rows, scores), best first, by exact scan."""
        exclude = np.asarray(exclude, np.int64)
        return [self._best(row_scores, n, exclude) for row_scores in self._scores(queries)]

    def score_rows(self, rows: Sequence[int], vector_of) -> None:
        """Scan once, in one product, for every row in `rows` not scanned yet; `vector_of(row)` its vector."""
        missing = [r for r in dict.fromkeys(int(r) for r in rows) if r not in self._row_scores]
        if missing:
            scores = self._scores(np.stack([vector_of(r) for r in missing]))
            self._row_scores.update(zip(missing, scores, strict=True))

    def row_neighbors(self, row: int, n: int, exclude: np.ndarray, vector_of) -> tuple[np.ndarray, np.ndarray]:
        """The n best allowed rows nearest a row's vector, the row itself and `exclude` left out."""
        self.score_rows([row], vector_of)
        exclude = np.union1d(np.asarray(exclude, np.int64), [row])
        return self._best(self._row_scores[row].copy(), n, exclude)
