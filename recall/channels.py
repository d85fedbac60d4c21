"""The channel registry: each recall channel's name, what it reads, and the function that recalls.

The API schema, the CLI's defaults, the recall service and the evaluation harness all read their lists
from here. A channel function gets one request's `ChannelRequest` and returns its candidates best first
(seen rows excluded), or None when it has nothing to say for this history (the merge then omits it).
The registry's order is the merge's order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmrecall.index.ranked import Ranked
from mmrecall.index.v2v import recall_from_triggers
from mmrecall.recall.multi_interest import interests, quotas
from mmrecall.recall.sources import RecallConfig, RecallSources


@dataclass(frozen=True)
class ChannelRequest:
    """What every channel may read for one request."""

    sources: RecallSources
    history: np.ndarray  # rows, oldest first
    seen: np.ndarray  # sorted unique history rows: never recalled
    triggers: list[int]  # latest distinct history rows, newest first
    trigger_weights: np.ndarray  # recency weight of each trigger
    user: str | None
    n: int  # candidates wanted
    config: RecallConfig


@dataclass(frozen=True)
class Channel:
    name: str
    reads: str  # what it needs, in words (docs, errors)
    recall: Callable[[ChannelRequest], Ranked | None]
    item_to_item: bool = False  # also answers /v1/similar for one item
    fallback: bool = False  # non-personalised: what a user without (enough) history is recalled from
    default: bool = True  # in a request's default channels (else served when a request names it)


def _v2v(request: ChannelRequest) -> Ranked:
    return _expand(request, request.triggers, request.trigger_weights)


def _expand(request: ChannelRequest, triggers: list[int], weights: np.ndarray) -> Ranked:
    """The triggers' v2v neighbours, each weighted by its trigger's weight (decay ** position), summed."""
    sources, n = request.sources, request.n
    summed = sources.summed_neighbors(triggers, weights, n, request.seen)
    if summed is not None:
        return summed
    return recall_from_triggers(
        triggers, lambda t: sources.neighbor_lists(t, n), k=n, decay=request.config.decay, exclude=request.seen
    )


def _cluster(request: ChannelRequest) -> Ranked:
    triggers = list(zip(request.triggers, request.trigger_weights.tolist(), strict=True))
    return request.sources.cluster_mates(triggers, request.n, request.seen)


def _personal(request: ChannelRequest) -> Ranked:
    vector = request.sources.user_vector(request.history, request.user)
    if vector is None:
        return Ranked.empty()
    return Ranked.of(*request.sources.search(vector, request.n, request.seen))


U2I2I_SEEDS = 10  # the user's nearest items that u2i2i expands


def _u2i2i(request: ChannelRequest) -> Ranked:
    """MIC's u2i2i: the user's nearest items (the personal channel's best, unseen) as seeds, each expanded
    through its v2v neighbours and weighted by its rank; an item's provenance is the seed that led there."""
    sources = request.sources
    vector = sources.user_vector(request.history, request.user)
    if vector is None:
        return Ranked.empty()
    seeds = [int(seed) for seed in sources.search(vector, U2I2I_SEEDS, request.seen)[0]]
    return _expand(request, seeds, np.power(request.config.decay, np.arange(len(seeds))))


def _multi_interest(request: ChannelRequest) -> Ranked | None:
    """PinnerSage: one query per top interest (from its medoid's cached neighbours where possible), the
    list shared by importance; an item found by two interests stays with the first."""
    if not len(request.history):
        return None
    sources, config = request.sources, request.config
    recent = request.history[-200:]
    found_interests = interests(
        sources.content_vectors(recent),
        threshold=config.interest_threshold,
        half_life=config.interest_half_life,
        max_interests=config.max_interests,
    )
    if not found_interests:
        return Ranked.empty()
    medoid_rows = [int(recent[interest.medoid]) for interest in found_interests]
    vectors = np.stack([interest.vector for interest in found_interests])
    lists = sources.nearest_each(medoid_rows, vectors, quotas(found_interests, request.n), request.seen)
    rows, scores, numbers, medoids = [], [], [], []
    for number, (medoid, (found, found_scores)) in enumerate(zip(medoid_rows, lists, strict=True)):
        rows.append(found)
        scores.append(np.asarray(found_scores, np.float64))
        numbers.append(np.full(len(found), number))
        medoids.append(np.full(len(found), medoid))
    ranked = Ranked.of(*(np.concatenate(part) for part in (rows, scores, medoids, numbers)))
    return ranked.take(np.argsort(-ranked.scores, kind="stable"))


def _sequential(request: ChannelRequest) -> Ranked | None:
    return request.sources.sequential(request.history, request.n, request.seen)


def _ranking(kind: str) -> Callable[[ChannelRequest], Ranked | None]:
    def recall(request: ChannelRequest) -> Ranked | None:
        return request.sources.ranking(kind, request.n, request.seen)

    return recall


REGISTRY: dict[str, Channel] = {
    channel.name: channel
    for channel in (
        Channel(
            "v2v", "the v2v table (or live ANN) of the latest trigger items, recency-weighted", _v2v, item_to_item=True
        ),
        Channel("cluster", "k-means cluster-mates of the trigger items", _cluster, item_to_item=True),
        Channel("personal", "the user tower over the history -> ANN over G item vectors", _personal),
        # not in the default merge: it did not raise merged on MovieLens (docs/models.md)
        Channel(
            "u2i2i",
            "the user's nearest items (personal) expanded through their v2v neighbours",
            _u2i2i,
            default=False,
        ),
        Channel(
            "multi_interest",
            "PinnerSage: Ward clusters of the history, one ANN query per top interest",
            _multi_interest,
        ),
        Channel(
            "sequential",
            "SASRec over item ids (trained by `mmrecall train --sequential`) -> its next items; warm items only",
            _sequential,
        ),
        Channel("popular", "interactions decayed by age (half-life 7 days)", _ranking("popular"), fallback=True),
        Channel(
            "trending",
            "growth of the last day's interactions over the 4 weeks before",
            _ranking("trending"),
            fallback=True,
        ),
        Channel("latest", "the newest ready items", _ranking("latest"), fallback=True),
    )
}
ALL_CHANNELS = tuple(REGISTRY)  # every served channel, in merge order
CHANNELS = tuple(name for name, c in REGISTRY.items() if c.default and not c.fallback)  # a request's default
FALLBACK_CHANNELS = tuple(name for name, c in REGISTRY.items() if c.fallback)  # added for short histories
SIMILAR_CHANNELS = tuple(name for name, channel in REGISTRY.items() if channel.item_to_item)


def get_channel(name: str) -> Channel:
    if name not in REGISTRY:
        raise KeyError(f"unknown channel {name!r}; known: {', '.join(ALL_CHANNELS)}")
    return REGISTRY[name]
