"""Ranking metrics with pessimistic ties: an item scoring the same as the target ranks above it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (10, 30, 50, 100)
LIST_K = 50  # list length for recall@, NDCG@, coverage and diversity


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among the valid (finite) scores; ties count against the target.

    scores: (n,) with -inf for items that may not be recalled; a target that may not be recalled
    (or is itself -inf) gets rank n, a miss at every K.
    """
    ranks = np.empty(len(targets), np.int64)
    for i, target in enumerate(targets):
        value = scores[target]
        if not np.isfinite(value):
            ranks[i] = len(scores)
            continue
        ranks[i] = int(np.count_nonzero(scores >= value)) - 1  # everything at or above, minus itself
    return ranks


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores, best first."""
    finite = np.count_nonzero(np.isfinite(scores))
    k = min(k, finite)
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class MetricAccumulator:
    """Collects per-query ranks and top lists; `summary()` gives the report's numbers."""

    def __init__(self, n_items: int, item_tags: Sequence[frozenset[str]], reference: np.ndarray | None) -> None:
        self.n_items = n_items
        self.item_tags = item_tags
        self.reference = reference  # (n_items, d) unit vectors for intra-list distance, or None
        self.hits = {k: [] for k in KS}
        self.recalls: list[float] = []
        self.ndcgs: list[float] = []
        self.recalled: set[int] = set()
        self.tag_counts: list[int] = []
        self.ilds: list[float] = []

    def add(self, scores: np.ndarray, targets: np.ndarray) -> None:
        ranks = target_ranks(scores, targets)
        for k in KS:
            self.hits[k].append(float((ranks < k).any()))
        self.recalls.append(float((ranks < LIST_K).mean()))
        gains = np.where(ranks < LIST_K, 1.0 / np.log2(ranks + 2.0), 0.0).sum()
        ideal = (1.0 / np.log2(np.arange(min(len(targets), LIST_K)) + 2.0)).sum()
        self.ndcgs.append(float(gains / ideal))
        top = top_k(scores, LIST_K)
        self.recalled.update(top.tolist())
        self.tag_counts.append(len(frozenset().union(*(self.item_tags[i] for i in top))) if len(top) else 0)
        if self.reference is not None and len(top) > 1:
            vectors = self.reference[top]
            sims = vectors @ vectors.T
            n = len(top)
            self.ilds.append(float(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1))))

    def summary(self) -> dict[str, float]:
        out = {f"hitrate@{k}": float(np.mean(v)) if v else 0.0 for k, v in self.hits.items()}
        out[f"recall@{LIST_K}"] = float(np.mean(self.recalls)) if self.recalls else 0.0
        out[f"ndcg@{LIST_K}"] = float(np.mean(self.ndcgs)) if self.ndcgs else 0.0
        out["coverage"] = len(self.recalled) / self.n_items
        out["diversity"] = float(np.mean(self.tag_counts)) if self.tag_counts else 0.0
        if self.ilds:
            out[f"ild@{LIST_K}"] = float(np.mean(self.ilds))
        out["queries"] = len(self.recalls)
        return out
