"""One recall set from several channels (after MIC, CIKM 2022): union, deduplicate, drop seen items,
then a greedy rerank by similarity + alpha * (channels that recalled it) + beta * (tag-diversity gain).
Every result keeps which channels recalled it and from which trigger item or interest."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field


@dataclass
class Candidate:
    item: str
    similarity: float  # the best similarity any channel gave it
    hits: list[tuple[str, dict]] = field(default_factory=list)  # (channel, that channel's result for the item)
    channel_set: set[str] = field(default_factory=set)

    @property
    def channels(self) -> list[str]:
        return sorted(self.channel_set)

    @property
    def sources(self) -> list[dict]:
        """[{"channel", "score", "trigger"?, "interest"?}]: built only for the candidates that make the list."""
        return [{"channel": channel, **{k: v for k, v in result.items() if k != "id"}} for channel, result in self.hits]


@dataclass(frozen=True)
class MergeWeights:
    similarity: float = 1.0
    alpha: float = 0.5  # per recalling channel
    beta: float = 0.2  # per unit of tag-diversity gain
    quotas: dict[str, int] = field(default_factory=dict)  # channel -> most candidates taken from it
    trust: dict[str, float] = field(default_factory=dict)  # channel -> factor on its similarities (default 1)
    # "score": a candidate's similarity is the best trusted score any channel gave it (MIC);
    # "rank": weighted reciprocal-rank fusion, sum over channels of trust / (rrf_k + rank), scaled to (0, 1]:
    # robust when channels' scores are not comparable (a dot product vs a recency-weighted sum)
    mode: str = "score"
    rrf_k: float = 60.0
    # exploration slots: the last `explore` places of the list go to the best candidates that `lead` (the
    # channel that dominates the ranking) did not recall, so the other channels always show some of their own
    explore: int = 0
    lead: str = "personal"

    def __post_init__(self) -> None:
        if self.mode not in ("score", "rank"):
            raise ValueError(f"merge mode must be score or rank, not {self.mode!r}")


def union(
    channel_results: dict[str, Sequence[dict]],
    *,
    seen: set[str],
    quotas: dict[str, int],
    trust: dict[str, float] | None = None,
    mode: str = "score",
    rrf_k: float = 60.0,
) -> list[Candidate]:
    """channel -> ranked [{"id", "score", "trigger"?/"interest"?}]; per-channel quotas, seen items dropped."""
    merged: dict[str, Candidate] = {}
    trust = trust or {}
    for channel, results in channel_results.items():
        limit = quotas.get(channel, len(results))
        factor = trust.get(channel, 1.0)
        for rank, result in enumerate(list(results)[:limit], start=1):
            item = result["id"]
            if item in seen:
                continue
            similarity = factor / (rrf_k + rank) if mode == "rank" else factor * float(result["score"])
            candidate = merged.get(item)
            if candidate is None:
                candidate = merged[item] = Candidate(item, similarity)
            elif mode == "rank":
                candidate.similarity += similarity
            else:
                candidate.similarity = max(candidate.similarity, similarity)
            candidate.hits.append((channel, result))
            candidate.channel_set.add(channel)
    if mode == "rank" and merged:
        top = max(c.similarity for c in merged.values()) or 1.0
        for candidate in merged.values():
            candidate.similarity /= top
    return list(merged.values())


def rerank(
    candidates: list[Candidate], k: int, weights: MergeWeights, tags_of: Callable[[str], Collection[str]]
) -> list[dict]:
    """Greedy: at each step take the candidate with the best score given the categories already covered.

    Lazy greedy: a candidate's diversity gain only shrinks as categories get covered, so a score
    computed earlier is an upper bound. Pop the best bound, refresh it, and take it if it still beats
    every other bound. Same picks (and tie order: lower index first) as rescoring everyone at each step,
    at a fraction of the work.
    """
    tag_sets = [frozenset(tags_of(c.item)) for c in candidates]
    base = [weights.similarity * c.similarity + weights.alpha * len(c.channel_set) for c in candidates]
    covered: set[str] = set()

    def gain(index: int) -> float:
        tags = tag_sets[index]
        return len(tags - covered) / len(tags) if tags else 0.0

    out: list[dict] = []

    def take(heap: list[tuple[float, int]], limit: int, allowed: Callable[[int], bool]) -> list[tuple[float, int]]:
        """Greedy picks of allowed candidates until the list holds `limit`; returns the heap of the rest."""
        heapq.heapify(heap)
        aside = []  # not allowed now; their bounds stay valid (gains only shrink)
        while heap and len(out) < limit:
            bound, index = heapq.heappop(heap)
            if not allowed(index):
                aside.append((bound, index))
                continue
            fresh_gain = gain(index)
            score = base[index] + weights.beta * fresh_gain
            if heap and (-score, index) > heap[0]:  # stale: another candidate may be better now
                heapq.heappush(heap, (-score, index))
                continue
            covered.update(tag_sets[index])
            chosen = candidates[index]
            out.append({"id": chosen.item, "score": float(score), "similarity": chosen.similarity,
                        "channels": chosen.channels, "diversity_gain": float(fresh_gain),
                        "sources": chosen.sources})  # fmt: skip
        return heap + aside

    rest = [(-(base[i] + weights.beta * gain(i)), i) for i in range(len(candidates))]
    rest = take(rest, k - weights.explore, lambda i: True)
    if weights.explore:  # exploration slots first, then (too few such candidates) anyone
        rest = take(rest, k, lambda i: weights.lead not in candidates[i].channel_set)
        take(rest, k, lambda i: True)
    return out


def merge(
    channel_results: dict[str, Sequence[dict]],
    *,
    k: int,
    seen: set[str],
    tags_of: Callable[[str], Collection[str]],
    weights: MergeWeights = MergeWeights(),
) -> list[dict]:
    candidates = union(channel_results, seen=seen, quotas=weights.quotas, trust=weights.trust, mode=weights.mode,
                       rrf_k=weights.rrf_k)  # fmt: skip
    return rerank(candidates, k, weights, tags_of)
