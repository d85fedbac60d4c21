"""The serving index: an immutable snapshot plus a small exact delta of vectors written since.

The snapshot is swapped whole on reindex; items encoded after it go to the delta at once, so they are
queryable without a reindex. A delta vector supersedes the snapshot's vector of the same id.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from index.ann import VectorIndex, as_matrix


@dataclass(frozen=True)
class Neighbor:
    id: str
    score: float


class LiveIndex:
    def __init__(self, snapshot: VectorIndex | None = None, *, dim: int | None = None) -> None:
        self._lock = threading.Lock()
        self.snapshot = snapshot
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
        base = len(self.snapshot) if self.snapshot is not None else 0
        return base + sum(1 for item_id in self.delta_ids if item_id not in self._snapshot_ids())

    def _snapshot_ids(self) -> dict[str, int]:
        return self.snapshot.position if self.snapshot is not None else {}

    def swap_snapshot(self, snapshot: VectorIndex, *, keep: Sequence[str] = ()) -> None:
        """Install a new snapshot; delta vectors listed in `keep` (written after it) stay."""
        with self._lock:
            kept = [(i, self.delta_vectors[self.delta_pos[i]]) for i in keep if i in self.delta_pos]
            self.snapshot, self._dim = snapshot, snapshot.dim
            self._reset_delta()
        if kept:
            self.add([i for i, _ in kept], np.stack([v for _, v in kept]))

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
                self.delta_index.add(np.stack(appended))

    def vector(self, item_id: str) -> np.ndarray | None:
        if item_id in self.deleted:
            return None
        pos = self.delta_pos.get(item_id)
        if pos is not None:
            return self.delta_vectors[pos].copy()
        return self.snapshot.vector(item_id) if self.snapshot is not None else None

    def search(self, query: np.ndarray, k: int, *, exclude: set[str] | frozenset = frozenset()) -> list[Neighbor]:
        """The k best neighbours of one query vector, best first, skipping `exclude`."""
        query = as_matrix(np.asarray(query, np.float32).reshape(1, -1))
        with self._lock:
            snapshot, delta_index, delta_ids = self.snapshot, self.delta_index, list(self.delta_ids)
            superseded = set(self.superseded)
        exclude = set(exclude) | self.deleted
        best: dict[str, float] = {}
        want = k + len(exclude)
        if snapshot is not None and len(snapshot):
            scores, positions = snapshot.search(query, want + len(superseded))
            for score, pos in zip(scores[0], positions[0], strict=True):
                item_id = snapshot.ids[pos] if pos >= 0 else None
                if item_id is not None and item_id not in superseded and item_id not in exclude:
                    best[item_id] = float(score)
        if delta_index is not None and delta_index.ntotal:
            scores, positions = delta_index.search(query, min(want, delta_index.ntotal))
            for score, pos in zip(scores[0], positions[0], strict=True):
                if pos >= 0 and delta_ids[pos] not in exclude:
                    best[delta_ids[pos]] = float(score)
        ranked = sorted(best.items(), key=lambda pair: -pair[1])[:k]
        return [Neighbor(item_id, score) for item_id, score in ranked]

    @property
    def has_delta(self) -> bool:
        """Whether vectors were added since the snapshot (items newer than its tables)."""
        return self.delta_index is not None and self.delta_index.ntotal > 0

    def search_delta(
        self, query: np.ndarray | None, k: int, *, exclude: set[str] | frozenset = frozenset()
    ) -> list[Neighbor]:
        """Only the vectors added since the snapshot (items newer than the snapshot's tables)."""
        if query is None or self.delta_index is None or not self.delta_index.ntotal:
            return []
        with self._lock:
            delta_index, delta_ids = self.delta_index, list(self.delta_ids)
        skip = set(exclude) | self.deleted
        scores, positions = delta_index.search(as_matrix(np.asarray(query, np.float32).reshape(1, -1)),
                                               min(k + len(skip), delta_index.ntotal))  # fmt: skip
        found = [Neighbor(delta_ids[p], float(s)) for s, p in zip(scores[0], positions[0], strict=True) if p >= 0]
        return [n for n in found if n.id not in skip][:k]
