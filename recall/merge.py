"""One recall set from several channels (after MIC, CIKM 2022): union, deduplicate, drop seen items,
then a greedy rerank by similarity + alpha * (channels that recalled it) + beta * (tag-diversity gain).
Every result keeps which channels recalled it and from which trigger item or interest.

Candidates are rows (index.ranked); the union and the scores are array work, and the result dicts, with
ids and provenance, are made for the listed items only (`describe`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mmrecall.core.merge_weights import MergeWeights
from mmrecall.index.ranked import NO_ROWS, Ranked, member_mask

__all__ = ["MergeWeights", "Pick", "Pool", "describe", "merge", "union"]


@dataclass
class Pool:
    """The union of the channels' candidates: one entry per row, in order of first appearance."""

    channels: list[str]  # the channels merged, in order
    results: list[Ranked]  # each channel's candidates as merged (quota applied, seen items dropped)
    rows: np.ndarray  # (m,) int64
    similarity: np.ndarray  # (m,) the best trusted score any channel gave it (or the fused rank score)
    where: list[np.ndarray]  # per channel: (m,) index into its results, -1 where it did not recall the row

    def __len__(self) -> int:
        return len(self.rows)

    def channel_count(self) -> np.ndarray:
        if not self.where:
            return np.zeros(0, np.int64)
        counts = np.zeros(len(self.where[0]), np.int64)
        for where in self.where:
            counts += where >= 0
        return counts

    def channel_names(self, indices: np.ndarray) -> list[list[str]]:
        """The channels that recalled each of the entries, sorted by name."""
        masks = np.zeros(len(indices), np.int64)
        for bit, where in enumerate(self.where):
            masks |= (where[indices] >= 0).astype(np.int64) << bit
        names: dict[int, list[str]] = {}  # a few distinct channel sets per request
        for mask in set(masks.tolist()):
            names[mask] = sorted(c for bit, c in enumerate(self.channels) if mask >> bit & 1)
        return [list(names[mask]) for mask in masks.tolist()]

    def picked_rows(self, picks: Sequence[Pick]) -> np.ndarray:
        return self.rows[np.array([p.index for p in picks], np.int64)]


class Pick(NamedTuple):
    index: int  # type: ignore[assignment]  # into the pool (shadows tuple.index, as NamedTuple fields may)
    score: float
    diversity_gain: float


def union(
    channel_results: dict[str, Ranked],
    *,
    seen: np.ndarray = NO_ROWS,
    quotas: dict[str, int] | None = None,
    trust: dict[str, float] | None = None,
    mode: str = "score",
    rrf_k: float = 60.0,
) -> Pool:
    """channel -> ranked candidates; per-channel quotas, seen rows dropped. Ranks (rank mode) count from the
    channel's first candidate, seen or not."""
    quotas, trust = quotas or {}, trust or {}
    channels, results, similarities = [], [], []
    for channel, ranked in channel_results.items():
        ranked = ranked.take(slice(0, quotas.get(channel, len(ranked))))
        factor = trust.get(channel, 1.0)
        if mode == "rank":
            similarities.append(factor / (rrf_k + np.arange(1, len(ranked) + 1, dtype=np.float64)))
        else:
            similarities.append(factor * ranked.scores)
        channels.append(channel)
        results.append(ranked)
    all_rows = np.concatenate([r.rows for r in results]) if results else NO_ROWS
    unseen = ~member_mask(all_rows, seen) if len(seen) and len(all_rows) else None  # one test for every entry
    if unseen is not None and not unseen.all():  # (the recall set's channels leave seen rows out already)
        keep = np.split(unseen, np.cumsum([len(r) for r in results])[:-1])
        results = [r.take(k) for r, k in zip(results, keep, strict=True)]
        similarities = [s[k] for s, k in zip(similarities, keep, strict=True)]
        all_rows = all_rows[unseen]
    unique, first, inverse = np.unique(all_rows, return_index=True, return_inverse=True)
    order = np.argsort(first)  # candidates in order of first appearance (the rerank's tie order)
    position = np.empty(len(unique), np.int64)
    position[order] = np.arange(len(unique))
    entry = position[inverse]  # candidate number of every channel entry
    rows, m = unique[order], len(unique)
    all_similarity = np.concatenate(similarities) if similarities else np.zeros(0)
    if mode == "rank":
        similarity = np.bincount(entry, weights=all_similarity, minlength=m).astype(np.float64, copy=False)
        if m:
            similarity /= similarity.max() or 1.0
    else:
        similarity = np.full(m, -np.inf)
        np.maximum.at(similarity, entry, all_similarity)
    where, start = [], 0
    for ranked in results:
        index = np.full(m, -1, np.int64)
        index[entry[start : start + len(ranked)]] = np.arange(len(ranked))
        start += len(ranked)
        where.append(index)
    return Pool(channels, results, rows, similarity, where)


def rerank(pool: Pool, k: int, weights: MergeWeights, categories: Sequence[Collection[str]]) -> list[Pick]:
    """Greedy: at each step take the candidate with the best score given the categories already covered.

    categories: the candidates' first-level tags, in pool order.
    Candidates with the same tags gain alike at every step, so within such a group only the best one
    left (the lowest index on ties) can be next: the greedy runs over the groups' leaders, a few dozen,
    not over every candidate. Lazy greedy: a gain only shrinks as categories get covered, so a score
    computed earlier is an upper bound. Pop the best bound, refresh it, and take it if it still beats
    every other bound. Same picks (and tie order: lower index first) as rescoring everyone at each step,
    at a fraction of the work.
    """
    tag_sets = [c if isinstance(c, frozenset) else frozenset(c) for c in categories]
    base_array = weights.similarity * pool.similarity + weights.alpha * pool.channel_count()
    covered: set = set()
    out: list[Pick] = []
    base, beta = base_array.tolist(), weights.beta
    every_tag = frozenset().union(*tag_sets)
    explore = weights.explore and weights.lead in pool.channels
    # candidates the exploration slots may take (not recalled by the lead channel) form their own groups
    outside_lead = (pool.where[pool.channels.index(weights.lead)] < 0).tolist() if explore else [False] * len(base)
    grouped: dict[tuple[frozenset, bool], list[int]] = {}
    for index in np.lexsort((np.arange(len(base)), -base_array)).tolist():  # best first, lower index on ties
        grouped.setdefault((tag_sets[index], outside_lead[index]), []).append(index)
    members, group_tags = list(grouped.values()), [tags for tags, _ in grouped]
    taken = [0] * len(members)  # how many of each group's members are picked

    def gain(group: int) -> float:
        tags = group_tags[group]
        return len(tags - covered) / len(tags) if tags else 0.0

    def take(heap: list[tuple[float, int, int]], limit: int, explore_only: bool = False) -> list:
        """Greedy picks until the list holds `limit` (only from groups outside the lead channel with
        `explore_only`); returns the heap of the rest. Entries: (-bound, leader, group)."""
        heapq.heapify(heap)
        aside = []  # not allowed now; their bounds stay valid (gains only shrink)
        while heap and len(out) < limit:
            entry = heapq.heappop(heap)
            _, index, group = entry
            if explore_only and not outside_lead[index]:
                aside.append(entry)
                continue
            fresh_gain = gain(group)
            score = base[index] + beta * fresh_gain
            if heap and (-score, index, group) > heap[0]:  # stale: another leader may be better now
                heapq.heappush(heap, (-score, index, group))
                continue
            out.append(Pick(index, score, fresh_gain))
            if fresh_gain:
                covered.update(group_tags[group])
            taken[group] += 1
            if taken[group] < len(members[group]):  # the group's next member leads it now
                follower = members[group][taken[group]]
                heapq.heappush(heap, (-(base[follower] + beta * gain(group)), follower, group))
            if fresh_gain and len(covered) == len(every_tag):  # nobody gains any more: exact bounds, once
                heap = [(-base[i], i, g) for _, i, g in heap]  # (not each stale one popped and pushed back)
                heapq.heapify(heap)
        return heap + aside

    # nothing is covered yet: every group with tags gains 1
    rest = [
        (-(base[group[0]] + beta * (1.0 if tags else 0.0)), group[0], number)
        for number, (group, tags) in enumerate(zip(members, group_tags, strict=True))
    ]
    rest = take(rest, k - weights.explore)
    if explore:  # exploration slots first, then anyone
        rest = take(rest, k, explore_only=True)
    take(rest, k)
    return out


def merge(
    channel_results: dict[str, Ranked],
    *,
    k: int,
    seen: np.ndarray,
    categories: Callable[[np.ndarray], Sequence[Collection[str]]],
    weights: MergeWeights = MergeWeights(),
) -> tuple[Pool, list[Pick]]:
    """categories(rows) -> each row's first-level tags."""
    pool = union(
        channel_results, seen=seen, quotas=weights.quotas, trust=weights.trust, mode=weights.mode, rrf_k=weights.rrf_k
    )
    return pool, rerank(pool, k, weights, categories(pool.rows))


def describe(pool: Pool, picks: list[Pick], id_of: Callable[[int], str]) -> list[dict]:
    """The picks as result dicts: {"id", "score", "similarity", "channels", "diversity_gain", "sources"}, where
    sources = [{"channel", "score", "trigger"?, "interest"?}] in channel order."""
    index = np.array([p.index for p in picks], np.int64)
    sources: list[list[dict]] = [[] for _ in picks]  # per pick, in channel order
    for channel, results, where in zip(pool.channels, pool.results, pool.where, strict=True):
        at = where[index]
        hit = np.flatnonzero(at >= 0)
        at = at[hit]
        scores = results.scores[at].tolist()
        triggers = results.trigger[at].tolist() if results.trigger is not None else None
        interests = results.interest[at].tolist() if results.interest is not None else None
        # a few trigger items recall most entries: look each one's id up once
        trigger_ids = {t: id_of(t) if t >= 0 else None for t in set(triggers)} if triggers is not None else {}
        for n, pick in enumerate(hit.tolist()):
            source = {"channel": channel, "score": scores[n]}
            if triggers is not None:
                source["trigger"] = trigger_ids[triggers[n]]
            if interests is not None:
                source["interest"] = interests[n]
            sources[pick].append(source)
    rows, similarity = pool.rows[index].tolist(), pool.similarity[index].tolist()
    return [
        {
            "id": id_of(row),
            "score": p.score,
            "similarity": sim,
            "channels": names,
            "diversity_gain": p.diversity_gain,
            "sources": found,
        }
        for p, row, sim, names, found in zip(picks, rows, similarity, pool.channel_names(index), sources, strict=True)
    ]
