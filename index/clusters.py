"""k-means cluster-id recall: every item gets a cluster id; a trigger item recalls its cluster-mates,
ranked by closeness to the trigger plus a small popularity/recency prior."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from mmrecall.index.ann import as_matrix
from mmrecall.index.ranked import Ranked, best_entries, member_mask, top_order

SIMILARITY_SLACK = 1e-4  # float32 dot products of unit vectors may pass 1 by rounding
PRIOR_WEIGHT = 0.1  # cluster recall's score: cos(trigger, item) + this * popularity prior (0..1)


def popularity_prior(counts: np.ndarray) -> np.ndarray:
    """Interactions per row -> float32 prior in [0, 1]: log-damped, the most popular item at 1 (all 0 when
    nothing was interacted with). Serving and the harness compute it alike."""
    damped = np.log1p(np.asarray(counts, np.float64))
    return (damped / max(float(damped.max(initial=0.0)), 1e-9)).astype(np.float32)


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
    km = faiss.Kmeans(
        matrix.shape[1],
        k,
        niter=niter if not large else min(niter, 12),
        seed=seed,
        spherical=True,
        max_points_per_centroid=64 if large else 256,
        verbose=False,
    )
    km.train(matrix)
    _, assignment = km.index.search(matrix, 1)
    return km.centroids.copy(), assignment[:, 0].astype(np.int32)  # type: ignore[union-attr]  # set by train


@dataclass
class ClusterTable:
    centroids: np.ndarray  # (k, d)
    assignment: np.ndarray  # (n,) cluster id per row
    members: list[np.ndarray]  # cluster id -> row positions
    contiguous: bool = False  # rows are stored cluster by cluster: members[c] is one block of rows

    @classmethod
    def build(cls, vectors: np.ndarray, k: int | None = None, *, seed: int = 0) -> ClusterTable:
        centroids, assignment = kmeans(vectors, k, seed=seed)
        return cls.from_assignment(centroids, assignment)

    @classmethod
    def from_assignment(cls, centroids: np.ndarray, assignment: np.ndarray) -> ClusterTable:
        order = np.argsort(assignment, kind="stable")
        cuts = np.searchsorted(assignment[order], np.arange(len(centroids) + 1))
        members = [order[cuts[c] : cuts[c + 1]] for c in range(len(centroids))]
        return cls(centroids, assignment, members, bool(np.all(assignment[1:] >= assignment[:-1])))

    # a saved table's files: float32 (c, d) centroids, and each row's cluster (n,) in the snapshot's row order
    FILES = ("clusters-centroids.npy", "clusters-assignment.npy")

    def save(self, directory: Path) -> None:
        np.save(directory / self.FILES[0], self.centroids)
        np.save(directory / self.FILES[1], self.assignment)

    @classmethod
    def load(cls, directory: Path) -> ClusterTable | None:
        """None when the directory holds no table."""
        if not all((directory / name).is_file() for name in cls.FILES):
            return None
        return cls.from_assignment(np.load(directory / cls.FILES[0]), np.load(directory / cls.FILES[1]))

    def assign(self, vector: np.ndarray) -> int:
        """The cluster a vector newer than the table belongs to."""
        return int(np.argmax(self.centroids @ np.asarray(vector, np.float32)))


def cluster_recall(
    table: ClusterTable,
    vectors: np.ndarray,
    triggers: list[tuple[int, float]],
    *,
    prior: np.ndarray | None = None,
    prior_weight: float = PRIOR_WEIGHT,
    prior_max: float | None = None,
    k: int = 100,
    trigger_clusters: list[int] | None = None,
    queries: list[np.ndarray | None] | None = None,
    exclude: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    cluster_rows: Sequence[np.ndarray] | None = None,
) -> Ranked:
    """Items of the triggers' clusters (rows, scores, trigger rows), best first.

    triggers: (row, weight) pairs, e.g. the latest items with recency weights; score = weight *
    (cos(trigger, item) + prior_weight * prior[item]); an item keeps its best trigger (the earlier on ties).
    For triggers newer than the table, `trigger_clusters` gives their clusters and `queries` their vectors
    (a trigger row of -1 with no query vector is scored against its cluster's centroid).
    exclude: rows never returned; allowed: a boolean mask over rows, the only ones returned; prior_max: the
    prior's largest value when known (it bounds the scores; else it is read from the prior, O(n)).
    cluster_rows: per cluster, the only members that may be returned, ascending (a selective filter's, kept
    with it: a few of each cluster's rows instead of a mask over all of them); default: the table's members.

    Vectors are unit length, so a trigger's scores are at most weight * (1 + prior_weight * max prior):
    once k items score above what every remaining trigger could reach, those triggers are skipped (the
    answer is the same; with recency weights the latest one or two triggers usually fill the list).
    """
    members_of, scores_of, trigger_of = [], [], []
    excluded = np.asarray(exclude if exclude is not None else [], np.int64)
    excluded = excluded[(excluded >= 0) & (excluded < len(table.assignment))]
    excluded_cluster = table.assignment[excluded]  # each cluster only checks its own excluded rows
    if prior is None or not len(prior):
        boost = 0.0
    else:
        boost = max(prior_weight * (float(np.max(prior)) if prior_max is None else prior_max), 0.0)
    ceiling = 1.0 + SIMILARITY_SLACK + boost
    weights = np.array([w for _, w in triggers], np.float64)
    # the best score triggers i onwards could give (no bound with a negative weight)
    reachable = np.maximum.accumulate(weights[::-1])[::-1] * ceiling if (weights >= 0).all() else weights + np.inf
    kth_best = -np.inf  # a lower bound on the k-th best distinct score so far (one trigger's own k-th)
    for i, (row, weight) in enumerate(triggers):
        if kth_best > reachable[i]:
            break
        cluster = trigger_clusters[i] if trigger_clusters is not None else int(table.assignment[row])
        members = table.members[cluster] if cluster_rows is None else cluster_rows[cluster]
        keep = members != row
        drop = excluded[excluded_cluster == cluster]
        if len(drop):
            keep &= ~member_mask(members, drop)
        if allowed is not None:
            keep &= allowed[members]
        if not keep.any():
            continue
        query = queries[i] if queries is not None and queries[i] is not None else None
        if query is None:
            query = vectors[row] if 0 <= row < len(table.assignment) else table.centroids[cluster]
        sliced = table.contiguous and cluster_rows is None  # one block of rows: a slice, not a gather
        if sliced and 4 * int(keep.sum()) > len(members):
            sims = (vectors[members[0] : members[-1] + 1] @ query)[keep]
        else:  # few of the members kept (a selective filter): gather those
            sims = vectors[members[keep]] @ query
        members = members[keep]
        scores = weight * (sims + (prior_weight * prior[members] if prior is not None else 0.0))
        # an item in the first k overall is in the first k of its best trigger's list, so each trigger
        # contributes at most k (the sort below stays small when clusters are large)
        order = top_order(scores, k)
        if len(order) == k:
            kth_best = max(kth_best, float(scores[order[-1]]))
        members_of.append(members[order])
        scores_of.append(scores[order])
        trigger_of.append(np.full(len(order), row, np.int64))
    if not members_of:
        return Ranked.empty()
    members, scores, trigger = (np.concatenate(parts) for parts in (members_of, scores_of, trigger_of))
    best = best_entries(members, scores)[:k]  # an item keeps its best trigger (the earlier on ties)
    return Ranked.of(members[best], scores[best], trigger[best])
