"""One recall set from several channels (after MIC, CIKM 2022): union, deduplicate, drop seen items,
then a greedy rerank by similarity + alpha * (channels that recalled it) + beta * (tag-diversity gain).
Every result keeps which channels recalled it and from which trigger item or interest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


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


def union(channel_results: dict[str, Sequence[dict]], *, seen: set[str], quotas: dict[str, int]) -> list[Candidate]:
    """channel -> ranked [{"id", "score", "trigger"?/"interest"?}]; per-channel quotas, seen items dropped."""
    merged: dict[str, Candidate] = {}
    for channel, results in channel_results.items():
        limit = quotas.get(channel, len(results))
        for result in list(results)[:limit]:
            item = result["id"]
            if item in seen:
                continue
            source = {"channel": channel, **{k: v for k, v in result.items() if k != "id"}}
            candidate = merged.setdefault(item, Candidate(item, float(result["score"])))
            candidate.similarity = max(candidate.similarity, float(result["score"]))
            candidate.sources.append(source)
    return list(merged.values())


def rerank(
    candidates: list[Candidate], k: int, weights: MergeWeights, tags_of: Callable[[str], Sequence[str]]
) -> list[dict]:
    """Greedy: at each step take the candidate with the best score given the tags already covered."""
    covered: set[str] = set()
    pool = list(candidates)
    out = []
    while pool and len(out) < k:
        best_index, best_score, best_gain = 0, float("-inf"), 0.0
        for index, candidate in enumerate(pool):
            tags = set(tags_of(candidate.item))
            gain = len(tags - covered) / len(tags) if tags else 0.0
            score = (
                weights.similarity * candidate.similarity
                + weights.alpha * len(candidate.channels)
                + weights.beta * gain
            )
            if score > best_score:
                best_index, best_score, best_gain = index, score, gain
        chosen = pool.pop(best_index)
        covered |= set(tags_of(chosen.item))
        out.append({"id": chosen.item, "score": best_score, "similarity": chosen.similarity,
                    "channels": chosen.channels, "diversity_gain": best_gain, "sources": chosen.sources})  # fmt: skip
    return out


def merge(
    channel_results: dict[str, Sequence[dict]],
    *,
    k: int,
    seen: set[str],
    tags_of: Callable[[str], Sequence[str]],
    weights: MergeWeights = MergeWeights(),
) -> list[dict]:
    return rerank(union(channel_results, seen=seen, quotas=weights.quotas), k, weights, tags_of)
