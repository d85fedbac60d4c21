"""v2v: a precomputed top-N neighbour table (refreshed by reindex) for O(1) lookups, and recall from a
user's trigger items (the latest ones, weighted by recency)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from index.ann import VectorIndex


def neighbor_table(index: VectorIndex, n: int = 100, *, batch: int = 4096, progress: Callable | None = None):
    """(rows int32 (N, n), scores float16 (N, n)): each row's n nearest other rows, best first (-1 pads)."""
    size = len(index)
    n = max(1, min(n, size - 1)) if size > 1 else 1
    rows = np.full((size, n), -1, np.int32)
    scores = np.zeros((size, n), np.float16)
    for start in range(0, size, batch):
        block = np.asarray(index.vectors[start : start + batch], np.float32)
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
