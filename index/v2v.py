"""v2v: a precomputed top-N neighbour table (refreshed by reindex) for O(1) lookups, and recall from a
user's trigger items (the latest ones, weighted by recency)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np

from index.ann import VectorIndex


def neighbor_table(
    index: VectorIndex, n: int = 100, *, batch: int = 4096, progress: Callable | None = None, ef_search: int = 0
):
    """(rows int32 (N, n), scores float16 (N, n)): each row's n nearest other rows, best first (-1 pads).

    ef_search: for an HNSW index, the search breadth used here (one query per item makes the table the
    slowest part of a reindex at 1M items; the serving breadth stays as tuned)."""
    size = len(index)
    n = max(1, min(n, size - 1)) if size > 1 else 1
    rows = np.full((size, n), -1, np.int32)
    scores = np.zeros((size, n), np.float16)
    params = faiss.SearchParametersHNSW(efSearch=max(ef_search, n + 1)) if ef_search and _is_hnsw(index) else None
    for start in range(0, size, batch):
        block = np.asarray(index.vectors[start : start + batch], np.float32)
        if params is not None:
            found_scores, found = index.index.search(block, n + 1, params=params)
        else:
            found_scores, found = index.search(block, n + 1)
        for offset in range(len(block)):
            me = start + offset
            keep = found[offset] != me
            picked, picked_scores = found[offset][keep][:n], found_scores[offset][keep][:n]
            rows[me, : len(picked)] = picked
            scores[me, : len(picked)] = picked_scores
        if progress:
            progress(min(start + batch, size), size)
    return rows, scores


def _is_hnsw(index: VectorIndex) -> bool:
    return isinstance(index.index, faiss.IndexHNSW)


def trigger_weights(n: int, decay: float = 0.8) -> np.ndarray:
    """Recency weights of the latest n triggers, latest first: 1, decay, decay^2, ..."""
    return np.power(decay, np.arange(n))


def recall_from_triggers(
    triggers: Sequence[str],
    neighbors_of: Callable[[str], Sequence[tuple[str, float]]],
    *,
    k: int,
    decay: float = 0.8,
    exclude: set[str] | frozenset = frozenset(),
) -> list[dict]:
    """triggers: latest first. Score = sum over triggers of w_t * similarity; provenance = the trigger
    that contributed most. Returns [{"id", "score", "trigger"}], best first."""
    totals: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    skip = set(exclude) | set(triggers)
    for trigger, weight in zip(triggers, trigger_weights(len(triggers), decay), strict=True):
        for item, similarity in neighbors_of(trigger):
            if item in skip:
                continue
            contribution = float(weight * similarity)
            totals[item] = totals.get(item, 0.0) + contribution
            if item not in best or contribution > best[item][0]:
                best[item] = (contribution, trigger)
    ranked = sorted(totals.items(), key=lambda pair: -pair[1])[:k]
    return [{"id": item, "score": score, "trigger": best[item][1]} for item, score in ranked]
