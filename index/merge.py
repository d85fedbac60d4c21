"""One recall set from several channels (after MIC, CIKM 2022): union, deduplicate, drop seen items,
then a greedy rerank by similarity + alpha * (channels that recalled it) + beta * (tag-diversity gain).
Every result keeps which channels recalled it and from which trigger item or interest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Candidate:
    item: str
    similarity: float  # the best similarity any channel gave it
    sources: list[dict] = field(default_factory=list)  # [{"channel", "score", "trigger"?, "interest"?}]

    @property
    def channels(self) -> list[str]:
        return sorted({source["channel"] for source in self.sources})


@dataclass(frozen=True)
class MergeWeights:
    similarity: float = 1.0
    alpha: float = 0.5  # per recalling channel
    beta: float = 0.2  # per unit of tag-diversity gain
    quotas: dict[str, int] = field(default_factory=dict)  # channel -> most candidates taken from it
    trust: dict[str, float] = field(default_factory=dict)  # channel -> factor on its similarities (default 1)


def union(
    channel_results: dict[str, Sequence[dict]],
    *,
    seen: set[str],
    quotas: dict[str, int],
    trust: dict[str, float] | None = None,
) -> list[Candidate]:
    """channel -> ranked [{"id", "score", "trigger"?/"interest"?}]; per-channel quotas, seen items dropped."""
    merged: dict[str, Candidate] = {}
    trust = trust or {}
    for channel, results in channel_results.items():
        limit = quotas.get(channel, len(results))
        factor = trust.get(channel, 1.0)
        for result in list(results)[:limit]:
            item = result["id"]
            if item in seen:
                continue
            source = {"channel": channel, **{k: v for k, v in result.items() if k != "id"}}
            similarity = factor * float(result["score"])
            candidate = merged.setdefault(item, Candidate(item, similarity))
            candidate.similarity = max(candidate.similarity, similarity)
            candidate.sources.append(source)
    return list(merged.values())


def rerank(
    candidates: list[Candidate], k: int, weights: MergeWeights, tags_of: Callable[[str], Sequence[str]]
) -> list[dict]:
    """Greedy: at each step take the candidate with the best score given the categories already covered.

    Vectorized over candidates (a candidate x tag matrix), so a step costs one pass of numpy, not Python.
    """
    if not candidates:
        return []
    tag_lists = [list(dict.fromkeys(tags_of(c.item))) for c in candidates]
    vocabulary = {tag: j for j, tag in enumerate(dict.fromkeys(t for tags in tag_lists for t in tags))}
    has = np.zeros((len(candidates), max(1, len(vocabulary))), bool)  # (m, t)
    for row, tags in enumerate(tag_lists):
        has[row, [vocabulary[t] for t in tags]] = True
    counts = has.sum(axis=1)  # (m,)
    base = np.array([weights.similarity * c.similarity + weights.alpha * len(c.channels) for c in candidates])
    covered = np.zeros(has.shape[1], bool)  # (t,)
    available = np.ones(len(candidates), bool)
    out = []
    for _ in range(min(k, len(candidates))):
        fresh = (has & ~covered).sum(axis=1)  # (m,)
        gain = np.divide(fresh, counts, out=np.zeros(len(candidates)), where=counts > 0)
        score = np.where(available, base + weights.beta * gain, -np.inf)
        best = int(np.argmax(score))
        available[best] = False
        covered |= has[best]
        chosen = candidates[best]
        out.append({"id": chosen.item, "score": float(score[best]), "similarity": chosen.similarity,
                    "channels": chosen.channels, "diversity_gain": float(gain[best]),
                    "sources": chosen.sources})  # fmt: skip
    return out


def merge(
    channel_results: dict[str, Sequence[dict]],
    *,
    k: int,
    seen: set[str],
    tags_of: Callable[[str], Sequence[str]],
    weights: MergeWeights = MergeWeights(),
) -> list[dict]:
    candidates = union(channel_results, seen=seen, quotas=weights.quotas, trust=weights.trust)
    return rerank(candidates, k, weights, tags_of)
