"""v2v: a precomputed top-N neighbour table (refreshed by reindex) for O(1) lookups, and recall from a
user's trigger items (the latest ones, weighted by recency)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np

from mmrecall.index.ann import VectorIndex
from mmrecall.index.ranked import NO_ROWS, Ranked, member_mask, top_order


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
    params = (
        faiss.SearchParametersHNSW(efSearch=max(ef_search, n + 1))  # type: ignore[attr-defined]  # not in faiss's stubs
        if ef_search and index.is_hnsw
        else None
    )
    for start in range(0, size, batch):
        block = np.asarray(index.vectors[start : start + batch], np.float32)
        if params is not None:
            found_scores, found = index.faiss_index.search(block, n + 1, params=params)
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


def trigger_weights(n: int, decay: float = 0.8) -> np.ndarray:
    """Recency weights of the latest n triggers, latest first: 1, decay, decay^2, ..."""
    return np.power(decay, np.arange(n))


def stack_neighbors(found: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (rows, similarities) lists as two (len(found), m) arrays, rows padded with -1."""
    width = max((len(rows) for rows, _ in found), default=0)
    rows = np.full((len(found), width), -1, np.int64)
    similarities = np.zeros((len(found), width), np.float64)
    for at, (found_rows, found_similarities) in enumerate(found):
        rows[at, : len(found_rows)] = found_rows
        similarities[at, : len(found_rows)] = found_similarities
    return rows, similarities


def recall_from_triggers(
    triggers: Sequence[int],
    neighbors_of: Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]],
    *,
    k: int,
    decay: float = 0.8,
    exclude: np.ndarray = NO_ROWS,
) -> Ranked:
    """triggers: rows, latest first; neighbors_of(triggers) -> (rows, similarities), each (len(triggers), m):
    every trigger's neighbours, best first, rows padded with -1 (`stack_neighbors`; one gather from the
    v2v table answers for all the triggers at once). Score = sum over triggers of w_t * similarity;
    provenance = the trigger that contributed most (the latest on ties). Ties in score keep the order in
    which items were first met."""
    if not len(triggers):
        return Ranked.empty()
    found, similarities = neighbors_of(triggers)
    found = np.asarray(found, np.int64)
    weights = trigger_weights(len(triggers), decay)[:, None]
    rows, contribution = found.reshape(-1), (weights * np.asarray(similarities, np.float64)).reshape(-1)
    trigger = np.repeat(np.asarray(triggers, np.int64), found.shape[1])
    keep = rows >= 0
    keep &= ~member_mask(rows, np.concatenate([np.asarray(exclude, np.int64), np.asarray(triggers, np.int64)]))
    rows, contribution, trigger = rows[keep], contribution[keep], trigger[keep]
    if not len(rows):
        return Ranked.empty()
    # one stable sort groups each row's entries in the order they were met
    order = np.argsort(rows, kind="stable")
    grouped = rows[order]
    starts_here = np.empty(len(rows), bool)
    starts_here[0] = True
    np.not_equal(grouped[1:], grouped[:-1], out=starts_here[1:])
    starts = np.flatnonzero(starts_here)
    unique, first = grouped[starts], order[starts]  # first: where each row was first met
    group = np.cumsum(starts_here) - 1
    inverse = np.empty(len(rows), np.int64)
    inverse[order] = group
    totals = np.bincount(inverse, weights=contribution, minlength=len(unique))  # summed in trigger order
    # provenance: the entry that contributed most, the earliest on ties
    in_group = contribution[order]
    top = np.maximum.reduceat(in_group, starts)
    best_trigger = trigger[np.minimum.reduceat(np.where(in_group == top[group], order, len(rows)), starts)]
    ranked = top_order(totals, k, ties=first)  # ties: in the order items were first met
    return Ranked(unique[ranked], totals[ranked], best_trigger[ranked])
