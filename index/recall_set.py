"""The full recall set for one request: each channel's candidates, then one merged, reranked list.

Channels (names as in reports and on the API):
  v2v            neighbours of the latest trigger items, recency-weighted
  cluster        cluster-mates of the trigger items (k-means cluster ids)
  personal       the user vector (G's user tower over the history) -> ANN over G item vectors
  multi_interest PinnerSage: Ward clusters of the history, one ANN query per top interest, quotas
  merged         union of the above, deduplicated, seen items dropped, MIC rerank, with provenance
The same function serves the API and the evaluation harness; they differ only in the `RecallSources`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from index.merge import MergeWeights, merge
from index.multi_interest import interests, quotas
from index.v2v import recall_from_triggers

CHANNELS = ("v2v", "cluster", "personal", "multi_interest")


class RecallSources(Protocol):
    def neighbors(self, item: str, n: int) -> Sequence[tuple[str, float]]: ...
    def cluster_mates(self, triggers: Sequence[tuple[str, float]], n: int) -> list[dict]: ...
    def content_vectors(self, items: Sequence[str]) -> np.ndarray: ...  # (h, d) unit, G space
    def user_vector(self, history: Sequence[str], user: str | None) -> np.ndarray | None: ...
    def search(self, vector: np.ndarray, n: int, exclude: set[str]) -> list[tuple[str, float]]: ...
    # nearest items to a history item whose vector is given (a cache, e.g. the v2v table, may answer)
    def nearest(self, item: str, vector: np.ndarray, n: int, exclude: set[str]) -> list[tuple[str, float]]: ...
    def tags(self, item: str) -> Collection[str]: ...  # first-level tags


@dataclass(frozen=True)
class RecallConfig:
    triggers: int = 10  # latest distinct history items used as v2v / cluster triggers
    decay: float = 0.5  # trigger recency weight per step back
    per_channel: int = 200  # candidates each channel returns
    interest_threshold: float = 1.0  # Ward cut (distance) for multi-interest
    interest_half_life: float = 10.0
    max_interests: int = 5
    merge: MergeWeights = field(default_factory=MergeWeights)


def latest_distinct(history: Sequence[str], n: int) -> list[str]:
    out: dict[str, None] = {}
    for item in reversed(history):
        out.setdefault(item, None)
        if len(out) == n:
            break
    return list(out)


def channel_candidates(
    sources: RecallSources,
    history: Sequence[str],
    user: str | None,
    channels: Sequence[str],
    config: RecallConfig,
) -> dict[str, list[dict]]:
    """channel -> [{"id", "score", "trigger" | "interest"}], best first; seen items excluded."""
    seen = set(history)
    n = config.per_channel
    triggers = latest_distinct(history, config.triggers)
    weights = np.power(config.decay, np.arange(len(triggers)))
    out: dict[str, list[dict]] = {}
    if "v2v" in channels:
        out["v2v"] = recall_from_triggers(triggers, lambda t: sources.neighbors(t, n), k=n, decay=config.decay,
                                          exclude=seen)  # fmt: skip
    if "cluster" in channels:
        mates = sources.cluster_mates(list(zip(triggers, weights.tolist(), strict=True)), n + len(seen))
        out["cluster"] = [m for m in mates if m["id"] not in seen][:n]
    if "personal" in channels:
        vector = sources.user_vector(history, user)
        found = sources.search(vector, n, seen) if vector is not None else []
        out["personal"] = [{"id": i, "score": s} for i, s in found]
    if "multi_interest" in channels and history:
        recent = list(history)[-200:]
        vectors = sources.content_vectors(recent)
        found_interests = interests(
            vectors, threshold=config.interest_threshold, half_life=config.interest_half_life,
            max_interests=config.max_interests,
        )  # fmt: skip
        results: dict[str, dict] = {}
        for number, (interest, quota) in enumerate(zip(found_interests, quotas(found_interests, n), strict=True)):
            medoid = recent[interest.medoid]
            for item, score in sources.nearest(medoid, interest.vector, quota, seen | results.keys()):
                results[item] = {"id": item, "score": score, "interest": number, "trigger": medoid}
        out["multi_interest"] = sorted(results.values(), key=lambda r: -r["score"])
    return out


def normalized(results: list[dict]) -> list[dict]:
    """Scale a channel's scores to (0, 1] by its best one, so channels weigh alike in the merge."""
    if not results:
        return results
    top = max(abs(r["score"]) for r in results) or 1.0
    return [{**r, "score": r["score"] / top} for r in results]


def recall_set(
    sources: RecallSources,
    history: Sequence[str],
    *,
    user: str | None = None,
    k: int = 100,
    channels: Sequence[str] = CHANNELS,
    config: RecallConfig = RecallConfig(),
) -> tuple[list[dict], dict[str, list[dict]]]:
    """(merged list with provenance, per-channel candidates)."""
    candidates = channel_candidates(sources, history, user, channels, config)
    if hasattr(sources, "prepare"):  # e.g. fetch the candidates' tags in one query
        sources.prepare({r["id"] for results in candidates.values() for r in results})
    merged = merge({c: normalized(r) for c, r in candidates.items()}, k=k, seen=set(history), tags_of=sources.tags,
                   weights=config.merge)  # fmt: skip
    return merged, candidates
