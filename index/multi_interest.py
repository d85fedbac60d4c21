"""Multi-interest recall after PinnerSage (KDD 2020): cluster a user's history, one query per interest.

Ward hierarchical clustering of the history vectors, cut where merging would raise the within-cluster
variance past a threshold (no preset k); each cluster's medoid is its interest vector; its importance is
the recency-weighted count of its members; the top interests share the result list by importance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage


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
    labels = np.ones(n, int) if n == 1 else fcluster(linkage(history, method="ward"), t=threshold, criterion="distance")
    found = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        vectors = history[members]
        distances = 1.0 - vectors @ vectors.T  # cosine distances within the cluster
        medoid = members[int(np.argmin(distances.sum(axis=1)))]
        found.append(Interest(history[medoid], int(medoid), float(weights[members].sum()), members.tolist()))
    found.sort(key=lambda interest: -interest.importance)
    return found[:max_interests]


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
