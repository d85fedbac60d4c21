"""mmrecall's own recall channels in the harness, through the same `recall.service` code the API runs.

`DenseSources` answers the recall-set questions from numpy arrays (exact search), restricted to the
split's candidates (the cold items under the cold protocol). Each channel's ranked list becomes dense
scores: listed items by rank, everything else -inf (not recalled).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from mmrecall.core.dataset import Split, category_tags
from mmrecall.core.features import gap_buckets
from mmrecall.evaluation.channels import Channel, EvalContext, trained_g
from mmrecall.index.clusters import ClusterTable, cluster_recall, popularity_prior
from mmrecall.index.ranked import Ranked
from mmrecall.index.v2v import stack_neighbors
from mmrecall.recall.channels import CHANNELS
from mmrecall.recall.merge import MergeWeights, merge
from mmrecall.recall.service import channel_candidates, recall_set
from mmrecall.recall.sources import RecallConfig


class DenseSources:
    """Rows are the dataset's item numbers; ids are those numbers as strings."""

    def __init__(
        self,
        n_items: int,
        space: np.ndarray,
        g_items: np.ndarray,
        trainer,
        tags: list[list[str]],
        allowed: np.ndarray | None,
        popularity: np.ndarray,
        known_users: np.ndarray,
    ) -> None:
        self.n_items = n_items
        self.space = space  # (N, d) v2v / cluster vectors
        self.g_items = g_items  # (N, d) personal / multi-interest index vectors
        self.trainer = trainer
        self.item_tags = tags
        self.allowed = allowed
        self.prior = popularity_prior(popularity)  # as the reindex writes it for serving
        self.known_users = known_users
        self.table = ClusterTable.build(space)
        self.query_gaps: np.ndarray | None = None  # time-gap buckets of the current query's history (seq tower)

    def row(self, item: str) -> int | None:
        return int(item)

    def item(self, row: int) -> str:
        return str(row)

    def _top(self, scores: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = scores.copy()
        if self.allowed is not None:
            scores[~self.allowed] = -np.inf
        scores[np.asarray(exclude, np.int64)] = -np.inf
        n = min(n, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, n - 1)[:n] if n > 0 else np.zeros(0, int)
        top = top[np.argsort(-scores[top], kind="stable")]
        return top.astype(np.int64), scores[top].astype(np.float64)

    def neighbors(self, row: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._top(self.space @ self.space[row], n, np.array([row]))

    def neighbor_lists(self, rows: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        return stack_neighbors([self.neighbors(row, n) for row in rows])

    def cluster_mates(self, triggers: Sequence[tuple[int, float]], n: int, exclude: np.ndarray) -> Ranked:
        return cluster_recall(
            self.table, self.space, list(triggers), prior=self.prior, k=n, exclude=exclude, allowed=self.allowed
        )

    def content_vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.g_items[rows]

    def user_vector(self, history: np.ndarray, user: str | None) -> np.ndarray:
        """(d,), or (k, d) the user's active interests (sequence tower)."""
        users = np.array([int(user)], np.int64) if user is not None else None
        gaps = [self.query_gaps] if self.query_gaps is not None else None
        vector = self.trainer.user_matrix([np.asarray(history, np.int64)], users, gaps=gaps)[0].numpy()
        active = self.trainer.active_interests(users, 1)
        return vector if active is None else vector[active[0].numpy()]

    def search(self, vector: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = self.g_items @ vector.T  # (N,) or (N, k): an item scores by its best interest
        return self._top(scores if scores.ndim == 1 else scores.max(axis=1), n, exclude)

    def nearest(self, row: int, vector: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.search(vector, n, exclude)

    def categories(self, rows: np.ndarray) -> list[list[str]]:
        return [self.item_tags[r] for r in np.asarray(rows).tolist()]


def dense_from_rows(rows: np.ndarray, n_items: int) -> np.ndarray:
    """Listed rows scored by rank (best highest), everything else -inf (not recalled)."""
    scores = np.full(n_items, -np.inf, np.float32)
    scores[rows] = np.arange(len(rows), 0, -1)
    return scores


def held_out_score(tops: list[list[int]], targets: list[int], n_items: int) -> tuple[float, float]:
    """(hitRate@50, coverage) of one top-50 list per held-out query."""
    hits = float(np.mean([target in top for top, target in zip(tops, targets, strict=True)]))
    return hits, len({item for top in tops for item in top}) / n_items


def pick_merge(
    scored: list[tuple[float, float, MergeWeights]], singles: dict[str, tuple[float, float]], *, tie: float
) -> tuple[float, float, MergeWeights, str]:
    """The merge a recall set wants: at least the hit rate of its best single channel AND more coverage than
    that channel, the best hit rate among those (ties within `tie` go to coverage). Where no setting
    does both, the best hit rate, ties to coverage."""
    best_hits, best_coverage = max(singles.values())
    both = [entry for entry in scored if entry[0] >= best_hits and entry[1] > best_coverage]
    pool, rule = (both, "hits >= best channel, more coverage") if both else (scored, "best hits")
    top = max(entry[0] for entry in pool)
    hits, coverage, weights = max((e for e in pool if e[0] >= top - tie), key=lambda e: (e[1], e[0]))
    return hits, coverage, weights, rule


class RecallSetChannel(Channel):
    """One of the recall-set channels (or `merged`), computed per query by recall.service."""

    uses_times = True

    def __init__(self, name: str, space: str = "g", variant: str = "personal", report_name: str | None = None) -> None:
        super().__init__()
        self.space = space  # "g" (G content vectors) or "encoder"
        self.variant = variant  # which trained G (user tower) feeds `personal`
        self.kind, self.name = name, report_name or name  # kind: the recall-set channel or "merged"

    def fit(self, ctx: EvalContext, split: Split) -> None:
        trainer = trained_g(ctx, split, self.variant)
        key = ("sources", id(split), self.space, self.variant)  # one cluster table and index per split and G
        if key not in ctx.models:
            ctx.models[key] = self.build_sources(ctx, split, trainer)
        self.sources = ctx.models[key]
        self.config = RecallConfig(**self.params) if self.params else RecallConfig()
        if self.kind == "merged":
            self.config = self.tune_merge(trainer)

    def build_sources(self, ctx: EvalContext, split: Split, trainer) -> DenseSources:
        data = ctx.data
        space = trainer.item_matrix(None, content_only=True).numpy() if self.space == "g" else ctx.vectors(ctx.encoder)
        tags = [sorted(t) for t in category_tags(data)]
        allowed = split.allowed(data.n_items)
        known_users = np.zeros(data.n_users, bool)
        known_users[np.unique(split.train_users)] = True
        popularity = np.bincount(split.train_items, minlength=data.n_items).astype(np.float64)
        g_items = trainer.item_matrix(trainer.known).numpy()
        return DenseSources(data.n_items, space, g_items, trainer, tags, allowed, popularity, known_users)

    def tune_merge(self, trainer) -> RecallConfig:
        """Merge weights chosen on the interactions G held out for early stopping (never on test).

        Channel candidates are computed once per held-out query; each weight setting only re-merges.
        """
        held_out = getattr(trainer, "held_out", None)
        if not held_out:
            return self.config
        queries = []
        for user, history, target in held_out:
            self.sources.query_gaps = trainer.gap_seqs[user][: len(history)] if trainer.gap_seqs else None
            hist = np.asarray(history, np.int64)
            user_id = str(user) if self.sources.known_users[user] else None
            candidates = channel_candidates(self.sources, hist, user_id, CHANNELS, self.config)
            queries.append(({c: r.normalized() for c, r in candidates.items()}, np.unique(hist), int(target)))
        self.sources.query_gaps = None
        grid = [
            MergeWeights(alpha=alpha, beta=beta, trust={c: others for c in CHANNELS if c != "personal"})
            for alpha, beta, others in itertools.product((0.5, 0.2, 0.0), (0.2, 0.05), (1.0, 0.6, 0.3))
        ]
        # rank fusion: the other channels' top items interleave with personal's by a weight on their ranks
        rank_grid = itertools.product((10.0, 60.0), (0.2, 0.05, 0.0), (1.0, 0.75, 0.5, 0.35, 0.25, 0.1))
        grid += [
            MergeWeights(
                mode="rank", rrf_k=rrf_k, alpha=0.0, beta=beta, trust={c: others for c in CHANNELS if c != "personal"}
            )
            for rrf_k, beta, others in rank_grid
        ]
        grid += [replace(weights, explore=explore) for explore in (4, 8) for weights in grid]  # exploration slots
        targets = [target for _, _, target in queries]
        n_items = self.sources.n_items
        singles = {
            channel: held_out_score(
                [results[channel].rows[:50].tolist() if channel in results else [] for results, _, _ in queries],
                targets,
                n_items,
            )
            for channel in CHANNELS
        }
        scored = []
        for weights in grid:
            merged = (
                merge(results, k=50, seen=seen, categories=self.sources.categories, weights=weights)
                for results, seen, _ in queries
            )
            tops = [pool.picked_rows(picks).tolist() for pool, picks in merged]
            scored.append((*held_out_score(tops, targets, n_items), weights))
        hits, coverage, weights, rule = pick_merge(scored, singles, tie=2 / len(queries))
        best = replace(self.config, merge=weights)
        self.tuned = {
            "mode": weights.mode,
            "rrf_k": weights.rrf_k,
            "alpha": weights.alpha,
            "beta": weights.beta,
            "trust": weights.trust,
            "explore": weights.explore,
            "held_out_hitrate@50": hits,
            "held_out_coverage": coverage,
            "held_out_best_hitrate@50": max(h for h, _, _ in scored),
            "rule": rule,
            "held_out_channels": {c: {"hitrate@50": h, "coverage": cov} for c, (h, cov) in singles.items()},
        }
        return best

    def scores(self, users, histories, times=None):
        out = np.empty((len(users), self.sources.n_items), np.float32)
        for row, (user, history) in enumerate(zip(users, histories, strict=True)):
            hist = np.asarray(history, np.int64)
            user_id = str(user) if self.sources.known_users[user] else None
            self.sources.query_gaps = gap_buckets(times[row]) if times is not None else None
            if self.kind == "merged":
                pool, picks, _ = recall_set(
                    self.sources, hist, user=user_id, k=self.config.per_channel, config=self.config
                )
                listed = pool.picked_rows(picks)
            else:
                listed = channel_candidates(self.sources, hist, user_id, [self.kind], self.config)[self.kind].rows
            out[row] = dense_from_rows(listed, self.sources.n_items)
        return out
