"""The recall service: one history (item rows, or ids with times and a user) through the channels and the
merge to one list with provenance. The API's routes and fast path, the CLI, the benchmarks and the
evaluation harness all call these functions; they differ only in the `RecallSources` they pass.

Channels are in `mmrecall.recall.channels` (the registry); `merged` is their union, deduplicated, seen items
dropped, reranked by MIC's rule (`mmrecall.recall.merge`), each result with the channels and trigger that
recalled it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from mmrecall.core import metrics
from mmrecall.core.events import DEFAULT_EVENTS, EventRule
from mmrecall.index.ranked import NO_ROWS, Ranked
from mmrecall.recall.channels import CHANNELS, FALLBACK_CHANNELS, REGISTRY, ChannelRequest
from mmrecall.recall.filters import NO_FILTER, RecallFilter
from mmrecall.recall.merge import Pick, Pool, describe, merge
from mmrecall.recall.serving import ServiceSources, ServingIndex, allowed_rows
from mmrecall.recall.sources import RecallConfig, RecallSources, history_rows, latest_distinct
from mmrecall.recall.tuning import recall_config
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

HISTORY_LIMIT = 200  # latest interactions of a stored user the channels read


class NoKnownHistory(LookupError):
    """None of the history items has a vector (HTTP 400)."""


def channel_candidates(
    sources: RecallSources,
    history: np.ndarray,
    user: str | None,
    channels: Sequence[str],
    config: RecallConfig,
    *,
    seen: np.ndarray | None = None,
) -> dict[str, Ranked]:
    """channel -> candidates (with trigger rows / interest numbers), best first; seen rows excluded.
    history: rows, oldest first; seen: sorted rows of all the user has seen (default: the history's).
    Channels run in the registry's order, whatever order they are asked in."""
    history = np.asarray(history, np.int64)
    triggers = latest_distinct(history.tolist(), config.triggers)
    request = ChannelRequest(
        sources=sources,
        history=history,
        seen=np.unique(history) if seen is None else seen,
        triggers=triggers,
        trigger_weights=np.power(config.decay, np.arange(len(triggers))),
        user=user,
        n=config.per_channel,
        config=config,
    )
    out: dict[str, Ranked] = {}
    for name, channel in REGISTRY.items():
        if name in channels:
            started = time.perf_counter()
            found = channel.recall(request)
            metrics.CHANNEL_SECONDS.labels(name).observe(time.perf_counter() - started)
            if found is not None:
                metrics.CHANNEL_CANDIDATES.labels(name).observe(len(found.rows))
                out[name] = found
    return out


def recall_set(
    sources: RecallSources,
    history: np.ndarray,
    *,
    user: str | None = None,
    k: int = 100,
    channels: Sequence[str] = CHANNELS,
    config: RecallConfig = RecallConfig(),
    seen: np.ndarray | None = None,
) -> tuple[Pool, list[Pick], dict[str, Ranked]]:
    """(the candidate pool, the merged picks from it, per-channel candidates); history: rows, oldest first;
    seen: sorted rows never to return (default: the history's). merge.describe turns the picks into result
    dicts with provenance."""
    seen = np.unique(history) if seen is None else seen
    candidates = channel_candidates(sources, history, user, channels, config, seen=seen)
    if hasattr(sources, "prepare"):  # e.g. fetch the candidates' tags in one query
        sources.prepare(np.concatenate([r.rows for r in candidates.values()]) if candidates else NO_ROWS)
    pool, picks = merge(
        {c: r.normalized() for c, r in candidates.items()},
        k=k,
        seen=seen,
        categories=sources.categories,
        weights=config.merge,
    )
    return pool, picks, candidates


def recall_answer(
    sources: ServiceSources,
    known: np.ndarray,
    *,
    k: int,
    channels: Sequence[str] = CHANNELS,
    user_id: str | None = None,
    merge_weights: dict | None = None,
    seen: np.ndarray | None = None,
) -> dict:
    """The /v1/recall body for a history's rows (`known`): merged results with titles and provenance, and
    how many candidates each channel gave. The parameters are the snapshot's tuned ones (recall.tuning);
    merge_weights: the deployment's explicit ones (settings.merge), which replace the tuned merge; seen:
    sorted rows of everything the user has seen (default: the history's)."""
    config = recall_config(sources.state.recall, k, merge_weights)
    pool, picks, candidates = recall_set(sources, known, user=user_id, k=k, channels=channels, config=config, seen=seen)
    rows = pool.picked_rows(picks).tolist()
    titles = sources.titles(rows)
    results = describe(pool, picks, sources.item)
    for result, row in zip(results, rows, strict=True):
        result["title"] = titles.get(row)
    return {
        "user_id": user_id,
        "history_used": len(known),
        "channels": {name: len(results) for name, results in candidates.items()},
        "results": results,
    }


def history_recall(
    serving: ServingIndex,
    history: list[str],
    times: dict[str, float],
    *,
    k: int,
    channels: Sequence[str] | None = None,
    user_id: str | None = None,
    seen_items: Sequence[str] = (),
    recall_filter: RecallFilter = NO_FILTER,
    in_memory_only: bool,
) -> dict:
    """The /v1/recall answer for a history (item ids, oldest first; times: item -> unix seconds; empty: a
    user without history). channels: None for the default, the history's channels (CHANNELS), with the
    fallback channels (popular, trending, latest) added when fewer than settings.fallback_below history
    items are known; `fallback` in the answer says so. NoKnownHistory: a history given without a user id of
    which no item is known (a client's mistake, not a new user).
    seen_items: everything else the user has seen (their whole stored history): never returned.
    recall_filter: the query-time filter (recall.filters), applied inside each channel's search; its
    `exclude_ids` join the seen items. `short_by` in the answer: how many fewer than k came back.
    in_memory_only: raise NeedsDatabase instead of reading the database (for callers on an event loop)."""
    state = serving.state
    filtered = allowed_rows(state, recall_filter, serving.database_url, in_memory_only=in_memory_only)
    sources = ServiceSources(
        state, serving.database_url, in_memory_only=in_memory_only, history_times=times, filtered=filtered
    )
    known = history_rows(sources, history)
    if not len(known) and history and user_id is None:
        raise NoKnownHistory("none of the history items has a vector (unknown, deleted or not encoded yet)")
    fallback = channels is None and len(known) < serving.settings.fallback_below
    if channels is None:
        channels = [*(CHANNELS if len(known) else ()), *FALLBACK_CHANNELS] if fallback else list(CHANNELS)
    seen = None
    never = [*seen_items, *recall_filter.exclude_ids]
    if never:  # a sorted row array: the channels and the merge test membership by binary search
        rows = (sources.row(item) for item in never)
        seen = np.union1d(known, np.fromiter((r for r in rows if r is not None), np.int64))
    answer = recall_answer(
        sources, known, k=k, channels=channels, user_id=user_id, merge_weights=serving.settings.merge, seen=seen
    )
    answer["short_by"] = max(0, k - len(answer["results"]))
    answer["fallback"] = fallback
    answer["degraded"] = None  # the API's answer while the database is down says why (api.routes.similar)
    answer["filter"] = recall_filter.answer_part(filtered.count if filtered is not None else None)
    return answer


def stored_history(
    database_url: str,
    user_id: str,
    rules: Mapping[str, EventRule] = DEFAULT_EVENTS,
    *,
    read_exclude_s: float = 0.0,
) -> tuple[list[tuple[str, float]], list[str]]:
    """(the user's latest positive interactions as (item id, unix seconds), oldest first: what the channels
    read; the items recall never returns to them: all they acted on, positively or not, and what they were
    shown without acting on in the last read_exclude_s). core.events says which event is which."""
    with session_scope(database_url) as session:
        latest = catalogue.user_positive_history(session, user_id, rules, limit=HISTORY_LIMIT)
        never = catalogue.user_never_recall(session, user_id, rules, read_exclude_s=read_exclude_s, now=time.time())
        return latest, never
