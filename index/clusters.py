"""k-means cluster-id recall: every item gets a cluster id; a trigger item recalls its cluster-mates,
ranked by closeness to the trigger plus a small popularity/recency prior."""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from index.ann import as_matrix

MAX_DEFAULT_K = 2048  # training cost grows with n * k: at 1M items, 4 sqrt(n) = 4000 took most of a reindex


def default_k(n: int) -> int:
    """About 4 sqrt(n) clusters (~25 items each at 10k, ~80 at 100k), at most 2048 (~500 each at 1M);
    never more than n / 2."""
    return int(max(1, min(n // 2 if n >= 2 else 1, round(4 * math.sqrt(n)), MAX_DEFAULT_K)))


def kmeans(
    vectors: np.ndarray, k: int | None = None, *, niter: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means: (centroids (k, d), cluster id per row (n,))."""
    matrix = as_matrix(vectors)
    k = min(k or default_k(len(matrix)), len(matrix))
    large = len(matrix) > 200_000  # train on a sample: 64 points per centroid place them well enough
    km = faiss.Kmeans(matrix.shape[1], k, niter=niter if not large else min(niter, 12), seed=seed, spherical=True,
                      max_points_per_centroid=64 if large else 256, verbose=False)  # fmt: skip
    km.train(matrix)
    _, assignment = km.index.search(matrix, 1)
    return km.centroids.copy(), assignment[:, 0].astype(np.int32)


@dataclass
class ClusterTable:
    centroids: np.ndarray  # (k, d)
    assignment: np.ndarray  # (n,) cluster id per row
    members: list[np.ndarray]  # cluster id -> row positions

    @classmethod
    def build(cls, vectors: np.ndarray, k: int | None = None, *, seed: int = 0) -> ClusterTable:
        centroids, assignment = kmeans(vectors, k, seed=seed)
        return cls.from_assignment(centroids, assignment)

    @classmethod
    def from_assignment(cls, centroids: np.ndarray, assignment: np.ndarray) -> ClusterTable:
        order = np.argsort(assignment, kind="stable")
        cuts = np.searchsorted(assignment[order], np.arange(len(centroids) + 1))
        members = [order[cuts[c] : cuts[c + 1]] for c in range(len(centroids))]
        return cls(centroids, assignment, members)

    def save(self, path_prefix) -> None:
        np.save(f"{path_prefix}-centroids.npy", self.centroids)
        np.save(f"{path_prefix}-assignment.npy", self.assignment)

    @classmethod
    def load(cls, path_prefix) -> ClusterTable:
        return cls.from_assignment(np.load(f"{path_prefix}-centroids.npy"), np.load(f"{path_prefix}-assignment.npy"))

    def assign(self, vector: np.ndarray) -> int:
        """The cluster a vector newer than the table belongs to."""
        return int(np.argmax(self.centroids @ np.asarray(vector, np.float32)))


def cluster_recall(
    table: ClusterTable,
    vectors: np.ndarray,
    triggers: list[tuple[int, float]],
    *,
    prior: np.ndarray | None = None,
    prior_weight: float = 0.1,
    k: int = 100,
    trigger_clusters: list[int] | None = None,
) -> list[tuple[int, float, int]]:
    """Items of the triggers' clusters: (row, score, trigger row), best first.

    triggers: (row, weight) pairs, e.g. the latest items with recency weights; score = weight *
    (cos(trigger, item) + prior_weight * prior[item]); an item keeps its best trigger.
    `trigger_clusters` gives clusters for triggers newer than the table (row -1 allowed there).
    """
    members_of, scores_of, trigger_of = [], [], []
    for i, (row, weight) in enumerate(triggers):
        cluster = trigger_clusters[i] if trigger_clusters is not None else int(table.assignment[row])
        members = table.members[cluster]
        members = members[members != row]
        if not len(members):
            continue
        sims = vectors[members] @ (vectors[row] if row >= 0 else table.centroids[cluster])
        members_of.append(members)
        scores_of.append(weight * (sims + (prior_weight * prior[members] if prior is not None else 0.0)))
        trigger_of.append(np.full(len(members), row))
    if not members_of:
        return []
    members, scores, trigger = (np.concatenate(parts) for parts in (members_of, scores_of, trigger_of))
    order = np.lexsort((np.arange(len(scores)), -scores))  # best score first; earlier trigger wins ties
    members, scores, trigger = members[order], scores[order], trigger[order]
    _, first = np.unique(members, return_index=True)  # an item keeps its best trigger
    first = np.sort(first)[:k]
    return list(zip(members[first].tolist(), scores[first].tolist(), trigger[first].tolist(), strict=True))
