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

from index.merge import MergeWeights, Pick, Pool, merge
from index.multi_interest import interests, quotas
from index.ranked import NO_ROWS, Ranked
from index.v2v import recall_from_triggers

CHANNELS = ("v2v", "cluster", "personal", "multi_interest")


class RecallSources(Protocol):
    """Answers in rows (index.ranked): an item's position in the sources' space. Rows excluded or
    deleted are never returned; every answer is best first."""

    def row(self, item: str) -> int | None: ...  # None: unknown, deleted or without a vector
    def item(self, row: int) -> str: ...
    def neighbors(self, row: int, n: int) -> tuple[np.ndarray, np.ndarray]: ...  # (rows, similarities)
    # several rows' neighbours as two (len(rows), m) arrays, rows padded with -1 (index.v2v.stack_neighbors)
    def neighbor_lists(self, rows: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]: ...
    def cluster_mates(self, triggers: Sequence[tuple[int, float]], n: int, exclude: np.ndarray) -> Ranked: ...
    def content_vectors(self, rows: np.ndarray) -> np.ndarray: ...  # (h, d) unit, G space
    def user_vector(self, history: np.ndarray, user: str | None) -> np.ndarray | None: ...
    def search(self, vector: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    # nearest items to a history row whose vector is given (a cache, e.g. the v2v table, may answer)
    def nearest(self, row: int, vector: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def categories(self, rows: np.ndarray) -> Sequence[Collection[str]]: ...  # first-level tags per row


@dataclass(frozen=True)
class RecallConfig:
    triggers: int = 10  # latest distinct history items used as v2v / cluster triggers
    decay: float = 0.5  # trigger recency weight per step back
    per_channel: int = 200  # candidates each channel returns
    interest_threshold: float = 1.0  # Ward cut (distance) for multi-interest
    interest_half_life: float = 10.0
    max_interests: int = 5
    merge: MergeWeights = field(default_factory=MergeWeights)


def latest_distinct(history: Sequence[int], n: int) -> list[int]:
    out: dict[int, None] = {}
    for row in reversed(history):
        out.setdefault(row, None)
        if len(out) == n:
            break
    return list(out)


def history_rows(sources: RecallSources, history: Sequence[str]) -> np.ndarray:
    """The rows of the history items the sources know, in order (unknown and deleted ones are skipped)."""
    rows = [sources.row(item) for item in history]
    return np.array([r for r in rows if r is not None], np.int64)


def channel_candidates(
    sources: RecallSources,
    history: np.ndarray,
    user: str | None,
    channels: Sequence[str],
    config: RecallConfig,
) -> dict[str, Ranked]:
    """channel -> candidates (with trigger rows / interest numbers), best first; seen rows excluded.
    history: rows, oldest first."""
    history = np.asarray(history, np.int64)
    seen = np.unique(history)
    n = config.per_channel
    triggers = latest_distinct(history.tolist(), config.triggers)
    weights = np.power(config.decay, np.arange(len(triggers)))
    out: dict[str, Ranked] = {}
    if "v2v" in channels:
        out["v2v"] = recall_from_triggers(triggers, lambda t: sources.neighbor_lists(t, n), k=n, decay=config.decay,
                                          exclude=seen)  # fmt: skip
    if "cluster" in channels:
        out["cluster"] = sources.cluster_mates(list(zip(triggers, weights.tolist(), strict=True)), n, seen)
    if "personal" in channels:
        vector = sources.user_vector(history, user)
        out["personal"] = Ranked.of(*sources.search(vector, n, seen)) if vector is not None else Ranked.empty()
    if "multi_interest" in channels and len(history):
        out["multi_interest"] = multi_interest(sources, history, seen, n, config)
    return out


def multi_interest(sources: RecallSources, history: np.ndarray, seen: np.ndarray, n: int,
                   config: RecallConfig) -> Ranked:  # fmt: skip
    """PinnerSage: one query per top interest (from its medoid's cached neighbours where possible), the
    list shared by importance; an item found by two interests stays with the first."""
    recent = history[-200:]
    found_interests = interests(
        sources.content_vectors(recent), threshold=config.interest_threshold, half_life=config.interest_half_life,
        max_interests=config.max_interests,
    )  # fmt: skip
    rows, scores, numbers, medoids = [], [], [], []
    exclude = seen
    for number, (interest, quota) in enumerate(zip(found_interests, quotas(found_interests, n), strict=True)):
        medoid = int(recent[interest.medoid])
        found, found_scores = sources.nearest(medoid, interest.vector, quota, exclude)
        rows.append(found)
        scores.append(np.asarray(found_scores, np.float64))
        numbers.append(np.full(len(found), number))
        medoids.append(np.full(len(found), medoid))
        exclude = np.concatenate([exclude, found])
    if not rows:
        return Ranked.empty()
    ranked = Ranked.of(*(np.concatenate(part) for part in (rows, scores, medoids, numbers)))
    return ranked.take(np.argsort(-ranked.scores, kind="stable"))


def recall_set(
    sources: RecallSources,
    history: np.ndarray,
    *,
    user: str | None = None,
    k: int = 100,
    channels: Sequence[str] = CHANNELS,
    config: RecallConfig = RecallConfig(),
) -> tuple[Pool, list[Pick], dict[str, Ranked]]:
    """(the candidate pool, the merged picks from it, per-channel candidates); history: rows, oldest first.
    index.merge.describe turns the picks into result dicts with provenance."""
    candidates = channel_candidates(sources, history, user, channels, config)
    if hasattr(sources, "prepare"):  # e.g. fetch the candidates' tags in one query
        sources.prepare(np.concatenate([r.rows for r in candidates.values()]) if candidates else NO_ROWS)
    pool, picks = merge({c: r.normalized() for c, r in candidates.items()}, k=k, seen=np.unique(history),
                        categories=sources.categories, weights=config.merge)  # fmt: skip
    return pool, picks, candidates
