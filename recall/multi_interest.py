"""Multi-interest recall after PinnerSage (KDD 2020): cluster a user's history, one query per interest.

Ward hierarchical clustering of the history vectors, cut where merging would raise the within-cluster
variance past a threshold (no preset k); each cluster's medoid is its interest vector; its importance is
the recency-weighted count of its members; the top interests share the result list by importance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import linkage


@dataclass
class Interest:
    vector: np.ndarray  # the medoid's vector (d,)
    medoid: int  # position of the medoid in the history
    importance: float
    members: list[int]  # positions in the history


def recency_weights(n: int, half_life: float = 10.0) -> np.ndarray:
    """Weight per history position (oldest first): 1 for the latest, halving every `half_life` items."""
    ages = np.arange(n - 1, -1, -1, dtype=np.float64)
    return np.power(0.5, ages / half_life)


def interests(
    history: np.ndarray, *, threshold: float = 1.0, half_life: float = 10.0, max_interests: int = 5
) -> list[Interest]:
    """history: unit vectors (h, d), oldest first. Returns the top interests by importance."""
    n = len(history)
    if n == 0:
        return []
    weights = recency_weights(n, half_life)
    labels = np.zeros(n, np.int64) if n == 1 else cut(linkage(history, method="ward"), n, threshold)
    importance = np.bincount(labels, weights=weights)
    found = []
    for label in np.argsort(-importance, kind="stable")[:max_interests]:  # medoids of the top interests only
        members = np.flatnonzero(labels == label)
        if len(members) > 1:
            vectors = history[members]
            distances = 1.0 - vectors @ vectors.T  # cosine distances within the cluster
            medoid = members[int(np.argmin(distances.sum(axis=1)))]
        else:  # a single item is its own medoid (often: a short or varied history)
            medoid = members[0]
        found.append(Interest(history[medoid], int(medoid), float(importance[label]), members.tolist()))
    return found


def cut(link: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """(n,) flat cluster labels of a monotone linkage (Ward's is) cut at `threshold`: the clusters of
    scipy's fcluster(criterion="distance"), by joining the merges in order while they stay within it
    (without fcluster's validation, which costs more than the clustering at a request's size)."""
    parent = np.arange(2 * n - 1)
    for step, (a, b, distance, _) in enumerate(link.tolist()):
        if distance > threshold:
            break
        parent[int(a)] = parent[int(b)] = n + step
    roots = parent[:n]
    while True:  # pointer jumping: every observation up to the root of its merged subtree
        up = parent[roots]
        if np.array_equal(up, roots):
            break
        roots = up
    return np.unique(roots, return_inverse=True)[1]


def quotas(found: list[Interest], k: int) -> list[int]:
    """Split k results between interests in proportion to importance (largest remainders)."""
    if not found:
        return []
    total = sum(i.importance for i in found)
    raw = np.array([k * i.importance / total for i in found])
    base = np.floor(raw).astype(int)
    for index in np.argsort(-(raw - base))[: k - base.sum()]:
        base[index] += 1
    return base.tolist()
