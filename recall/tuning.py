"""Tuning the recall set on held-out interactions, through the served path.

The reindex of a G snapshot runs this before it publishes: G's trainer held out each user's last training
interaction (`held_out.json` in its checkpoint); every query goes through `recall.service` over the new
snapshot's `ServiceSources`, exactly as the API will ask it. The trigger decay is chosen by the v2v
channel's held-out hitRate@50, then the merge weights by the merged list's (`pick_merge`'s rule). The result
is stored in the snapshot's metadata (`recall`) and every caller of the recall service reads it from there.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from mmrecall.core.merge_weights import MergeWeights
from mmrecall.index.ranked import Ranked
from mmrecall.recall.channels import CHANNELS
from mmrecall.recall.merge import merge
from mmrecall.recall.sources import RecallConfig, RecallSources, history_rows

K = 50  # the list the tuning scores (hitRate@50), each channel asked for recall_config(K)'s candidates
DECAYS = (0.5, 0.8, 1.0)
MAX_QUERIES = 2000  # held-out users scored (a seeded sample beyond this): the grid re-merges each one ~160 times


@dataclass(frozen=True)
class HeldOut:
    user: str
    history: list[str]  # item ids, oldest first
    times: list[float] | None  # unix seconds of the history's items
    target: str


def recall_config(stored: dict | None, k: int, merge_override: dict | None = None) -> RecallConfig:
    """The recall set's parameters for a request of k: what the snapshot's tuning stored (defaults where it
    stored nothing), the merge weights replaced by a deployment's explicit setting (settings.merge)."""
    stored = stored or {}
    merge_fields = merge_override or stored.get("merge") or {}
    return RecallConfig(
        per_channel=max(k, 100),
        triggers=int(stored.get("triggers", RecallConfig.triggers)),
        decay=float(stored.get("decay", RecallConfig.decay)),
        merge=MergeWeights(**merge_fields),
    )


def merge_grid() -> list[MergeWeights]:
    """MIC's score fusion and reciprocal-rank fusion, trust in the non-personal channels, exploration slots."""
    others = [c for c in CHANNELS if c != "personal"]
    grid = [
        MergeWeights(alpha=alpha, beta=beta, trust=dict.fromkeys(others, trust))
        for alpha, beta, trust in itertools.product((0.5, 0.2, 0.0), (0.2, 0.05), (1.0, 0.6, 0.3))
    ]
    grid += [
        MergeWeights(mode="rank", rrf_k=rrf_k, alpha=0.0, beta=beta, trust=dict.fromkeys(others, trust))
        for rrf_k, beta, trust in itertools.product((10.0, 60.0), (0.2, 0.05, 0.0), (1.0, 0.75, 0.5, 0.35, 0.25, 0.1))
    ]
    return grid + [replace(weights, explore=explore) for explore in (4, 8) for weights in grid]


def held_out_score(tops: list[list[int]], targets: list[int], n_rows: int) -> tuple[float, float]:
    """(hitRate@K, coverage) of one top-K list per held-out query."""
    hits = float(np.mean([target in top for top, target in zip(tops, targets, strict=True)]))
    return hits, len({row for top in tops for row in top}) / max(n_rows, 1)


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


def sample_queries(queries: list[HeldOut], limit: int = MAX_QUERIES) -> list[HeldOut]:
    return queries if len(queries) <= limit else random.Random(0).sample(queries, limit)


def tune_recall(
    sources_for: Callable[[HeldOut], RecallSources], queries: list[HeldOut], n_rows: int, *, on_progress=None
) -> dict:
    """{"decay", "triggers", "merge", "held_out": {...}} chosen on the held-out queries; sources_for gives the
    sources one query runs over (the serving state, with the query's history times)."""
    from mmrecall.recall.service import channel_candidates  # the service imports this module's recall_config

    prepared = []
    for query in queries:
        sources = sources_for(query)
        rows = history_rows(sources, query.history)
        target = sources.row(query.target)
        if len(rows) and target is not None:
            prepared.append((sources, rows, np.unique(rows), query.user, int(target)))
    if not prepared:
        return {}
    targets = [target for *_, target in prepared]
    base = recall_config(None, K)

    def candidates(config: RecallConfig, channels) -> list[dict[str, Ranked]]:
        return [
            channel_candidates(sources, rows, user, channels, config, seen=seen)
            for sources, rows, seen, user, _ in prepared
        ]

    def single(found: list[dict[str, Ranked]], channel: str) -> tuple[float, float]:
        tops = [f[channel].rows[:K].tolist() if channel in f else [] for f in found]
        return held_out_score(tops, targets, n_rows)

    by_decay = {d: single(candidates(replace(base, decay=d), ["v2v"]), "v2v") for d in DECAYS}
    decay = max(DECAYS, key=lambda d: (by_decay[d][0], d == base.decay))  # ties keep the default
    config = replace(base, decay=decay)
    found = [{c: r.normalized() for c, r in f.items()} for f in candidates(config, CHANNELS)]
    singles = {channel: single(found, channel) for channel in CHANNELS}
    scored = []
    grid = merge_grid()
    for done, weights in enumerate(grid):
        tops = []
        for results, (sources, _, seen, _, _) in zip(found, prepared, strict=True):
            pool, picks = merge(results, k=K, seen=seen, categories=sources.categories, weights=weights)
            tops.append(pool.picked_rows(picks).tolist())
        scored.append((*held_out_score(tops, targets, n_rows), weights))
        if on_progress:
            on_progress(done + 1, len(grid))
    hits, coverage, weights, rule = pick_merge(scored, singles, tie=2 / len(prepared))
    return {
        "decay": decay,
        "triggers": config.triggers,
        "merge": asdict(weights),
        "held_out": {
            "queries": len(prepared),
            "merged_hitrate@50": hits,
            "merged_coverage": coverage,
            "best_hitrate@50": max(h for h, _, _ in scored),
            "rule": rule,
            "v2v_hitrate@50_by_decay": {str(d): h for d, (h, _) in by_decay.items()},
            "channels": {c: {"hitrate@50": h, "coverage": cov} for c, (h, cov) in singles.items()},
        },
    }
