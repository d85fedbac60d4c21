"""The serving index: an immutable snapshot plus a small exact delta of vectors written since.

A reindex brings a new LiveIndex (the serving state is replaced whole, so the rows a request holds stay
valid); items encoded after it go to the delta at once, so they are queryable without a reindex. A delta
vector supersedes the snapshot's vector of the same id; delta rows are only appended.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from mmrecall.index.ann import VectorIndex, as_matrix
from mmrecall.index.ranked import NO_ROWS, member_mask, top_rows


@dataclass(frozen=True)
class Neighbor:
    id: str
    score: float


class LiveIndex:
    def __init__(self, snapshot: VectorIndex | None = None, *, dim: int | None = None) -> None:
        self._lock = threading.Lock()
        self.snapshot = snapshot  # fixed for the index's life (a reindex brings a new LiveIndex)
        self.base = len(snapshot) if snapshot is not None else 0  # rows from here on are the delta's
        self._dim = snapshot.dim if snapshot is not None else dim
        self.deleted: set[str] = set()  # never returned by any search or lookup
        self._reset_delta()

    def _reset_delta(self) -> None:
        self.delta_ids: list[str] = []
        self.delta_pos: dict[str, int] = {}
        self.delta_vectors = np.zeros((0, self._dim or 0), np.float32)
        self.delta_index = faiss.IndexFlatIP(self._dim) if self._dim else None
        self.superseded: set[str] = set()  # ids whose delta vector replaces the snapshot's

    @property
    def dim(self) -> int | None:
        return self._dim

    def __len__(self) -> int:
        return self.base + sum(1 for item_id in self.delta_ids if item_id not in self._snapshot_ids())

    def _snapshot_ids(self) -> dict[str, int]:
        return self.snapshot.position if self.snapshot is not None else {}

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace vectors (re-encoded items replace their old vector)."""
        matrix = as_matrix(vectors)
        if not len(ids):
            return
        with self._lock:
            if self._dim is None:
                self._dim = matrix.shape[1]
                self._reset_delta()
            if matrix.shape[1] != self._dim:
                raise ValueError(f"vector dim {matrix.shape[1]} != index dim {self._dim}")
            replaced, appended = False, []
            self.deleted.difference_update(ids)  # a re-ingested item is live again
            for item_id, vec in zip(ids, matrix, strict=True):
                pos = self.delta_pos.get(item_id)
                if pos is None:
                    self.delta_pos[item_id] = len(self.delta_ids)
                    self.delta_ids.append(item_id)
                    appended.append(vec)
                    if item_id in self._snapshot_ids():
                        self.superseded.add(item_id)
                elif pos < len(self.delta_vectors):
                    self.delta_vectors[pos], replaced = vec, True
                else:  # the same id twice in this call: the last vector wins
                    appended[pos - len(self.delta_vectors)] = vec
            if appended:
                self.delta_vectors = np.vstack([self.delta_vectors, np.stack(appended)])
            if replaced:  # a flat index cannot update rows in place; the delta is small, rebuild it
                self.delta_index = faiss.IndexFlatIP(self._dim)
                self.delta_index.add(self.delta_vectors)
            elif appended:
                assert self.delta_index is not None  # the dimension is known once anything was added
                self.delta_index.add(np.stack(appended))

    def vector(self, item_id: str) -> np.ndarray | None:
        if item_id in self.deleted:
            return None
        pos = self.delta_pos.get(item_id)
        if pos is not None:
            return self.delta_vectors[pos].copy()
        return self.snapshot.vector(item_id) if self.snapshot is not None else None

    # --- rows: snapshot positions 0..n-1, then n + position in the delta --------------------------
    def row(self, item_id: str) -> int | None:
        """The item's current row (its delta row once re-encoded); None when unknown or deleted."""
        if item_id in self.deleted:
            return None
        pos = self.delta_pos.get(item_id)
        if pos is not None:
            return self.base + pos
        return self.snapshot.position.get(item_id) if self.snapshot is not None else None

    def item(self, row: int) -> str:
        # a row below base is the snapshot's (base is 0 without one)
        return self.snapshot.ids[row] if row < self.base else self.delta_ids[row - self.base]  # type: ignore[union-attr]

    def row_vector(self, row: int) -> np.ndarray:
        base = self.base
        if row < base:
            return np.asarray(self.snapshot.vectors[row], np.float32)  # type: ignore[union-attr]  # row < base
        return self.delta_vectors[row - base].copy()

    def moved_rows(self) -> dict[int, int]:
        """Snapshot row -> delta row of the items re-encoded since the snapshot."""
        if not self.superseded:
            return {}
        position = self._snapshot_ids()
        return {position[i]: self.base + self.delta_pos[i] for i in self.superseded if i in self.delta_pos}

    def blocked_rows(self) -> set[int]:
        """Rows never returned: deleted items' rows, and snapshot rows whose item was re-encoded since
        (its delta row replaces it)."""
        if not self.deleted and not self.superseded:
            return set()
        position, base = self._snapshot_ids(), self.base
        blocked = {position[i] for i in self.deleted | self.superseded if i in position}
        blocked.update(base + self.delta_pos[i] for i in self.deleted if i in self.delta_pos)
        return blocked

    def search_rows(
        self, query: np.ndarray, k: int, *, exclude: Collection[int] = (), allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k best neighbours of one query vector, best first, skipping `exclude`
        rows and blocked ones. allowed: a boolean mask over rows (snapshot rows, then the delta's), the only
        ones returned, applied inside the snapshot's search."""
        query = as_matrix(np.asarray(query, np.float32).reshape(1, -1))
        with self._lock:
            snapshot, delta_index = self.snapshot, self.delta_index
            skip = self.blocked_rows() | set(exclude)
        base, rows, scores = self.base, [], []
        if snapshot is not None and base:
            found_scores, positions = snapshot.search(
                query, k + len(skip), allowed=None if allowed is None else allowed[:base]
            )
            rows.append(positions[0])
            scores.append(found_scores[0])
        if delta_index is not None and delta_index.ntotal:
            wanted = delta_index.ntotal if allowed is not None else min(k + len(skip), delta_index.ntotal)
            found_scores, positions = delta_index.search(query, wanted)  # filtered: the whole (small, exact) delta
            delta_rows = np.where(positions[0] >= 0, positions[0] + base, -1)
            if allowed is not None:
                # rows the mask does not cover were added after it was made: not allowed
                covered = (delta_rows >= 0) & (delta_rows < len(allowed))
                passes = np.zeros(len(delta_rows), bool)
                passes[covered] = allowed[delta_rows[covered]]
                delta_rows = np.where(passes, delta_rows, -1)
            rows.append(delta_rows)
            scores.append(found_scores[0])
        if not rows:
            return NO_ROWS, np.zeros(0, np.float32)
        found, found_scores = np.concatenate(rows).astype(np.int64), np.concatenate(scores)
        keep = found >= 0
        if skip:
            keep &= ~member_mask(found, np.fromiter(skip, np.int64, len(skip)))
        return top_rows(found[keep], found_scores[keep], k)

    def search(self, query: np.ndarray, k: int, *, exclude: set[str] | frozenset = frozenset()) -> list[Neighbor]:
        """The k best neighbours of one query vector, best first, skipping `exclude` ids."""
        rows = {row for row in map(self.row, exclude) if row is not None}
        found, scores = self.search_rows(query, k, exclude=rows)
        return [Neighbor(self.item(r), float(s)) for r, s in zip(found.tolist(), scores.tolist(), strict=True)]

    @property
    def has_delta(self) -> bool:
        """Whether vectors were added since the snapshot (items newer than its tables)."""
        return self.delta_index is not None and self.delta_index.ntotal > 0

    def search_delta(
        self, query: np.ndarray | None, k: int, *, exclude: Collection[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) among the vectors added since the snapshot only (items newer than its tables)."""
        if query is None or self.delta_index is None or not self.delta_index.ntotal:
            return NO_ROWS, np.zeros(0, np.float32)
        with self._lock:
            delta_index, base = self.delta_index, self.base
            skip = {base + self.delta_pos[i] for i in self.deleted if i in self.delta_pos} | set(exclude)
        scores, positions = delta_index.search(
            as_matrix(np.asarray(query, np.float32).reshape(1, -1)), min(k + len(skip), delta_index.ntotal)
        )
        keep = [i for i, p in enumerate(positions[0].tolist()) if p >= 0 and base + p not in skip][:k]
        return positions[0][keep].astype(np.int64) + base, scores[0][keep]
