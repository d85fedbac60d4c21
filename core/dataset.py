"""A dataset in the interchange format, as arrays, and the two evaluation protocols over it."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mmrecall.core.events import DEFAULT_EVENTS, POSITIVE, EventRule
from mmrecall.core.interchange import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    ItemRecord,
    read_interactions,
    read_items,
    tag_at_level,
)


@dataclass
class Dataset:
    name: str
    items: list[ItemRecord]
    item_index: dict[str, int]
    user_ids: list[str]
    users: np.ndarray  # (m,) int32 user index per interaction, in file order
    items_of: np.ndarray  # (m,) int32 item index per interaction
    timestamps: np.ndarray  # (m,) float64
    fingerprint: str  # changes when either file does; keys the caches
    weights: np.ndarray | None = None  # (m,) float32 interaction weights (1 where the file has none)
    # negative feedback (core.events), not among the interactions above: (k,) user and item indices
    negative_users: np.ndarray | None = None
    negative_items: np.ndarray | None = None
    negative_times: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def first_users(self, n: int) -> Dataset:
        """The same catalogue with only the first n users' interactions (a smoke run); the item vectors'
        cache key stays the catalogue's."""
        if n >= self.n_users:
            return self
        keep = self.users < n
        return replace(
            self,
            user_ids=self.user_ids[:n],
            users=self.users[keep],
            items_of=self.items_of[keep],
            timestamps=self.timestamps[keep],
            weights=self.weights[keep] if self.weights is not None else None,
            **self._negatives_of_first(n),
        )

    def _negatives_of_first(self, n: int) -> dict:
        if self.negative_users is None or self.negative_items is None:
            return {}
        keep = self.negative_users < n
        times = self.negative_times[keep] if self.negative_times is not None else None
        return {
            "negative_users": self.negative_users[keep],
            "negative_items": self.negative_items[keep],
            "negative_times": times,
        }


def _digest(*paths: Path) -> str:
    digest = hashlib.sha1()
    for path in paths:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def load_dataset(directory: Path, rules: Mapping[str, EventRule] | None = None) -> Dataset:
    """A dataset directory's items and interactions. rules (core.events; default: DEFAULT_EVENTS) say what
    each event is: positives are the interactions (weighted), negatives are kept aside for training, reads
    are left out. An event name the rules do not know counts as a positive of weight 1 x its own."""
    directory = Path(directory)
    rules = DEFAULT_EVENTS if rules is None else rules
    items = list(read_items(directory))
    item_index = {item.id: i for i, item in enumerate(items)}
    user_index: dict[str, int] = {}
    users, item_rows, stamps, weights = [], [], [], []
    negatives: list[tuple[str, int, float]] = []
    for row in read_interactions(directory):
        item = item_index.get(row.item_id)
        if item is None:
            continue  # interactions with items outside the catalogue cannot be recalled
        kind, weight = rules.get(row.event or "", POSITIVE).classify(row.weight)
        if kind == "negative":
            negatives.append((row.user_id, item, row.timestamp))
        if kind != "positive":
            continue
        users.append(user_index.setdefault(row.user_id, len(user_index)))
        item_rows.append(item)
        stamps.append(row.timestamp)
        weights.append(weight)
    # users with positives only
    negative_rows = [(user_index[u], i, t) for u, i, t in negatives if u in user_index]
    return Dataset(
        name=directory.name,
        items=items,
        item_index=item_index,
        user_ids=list(user_index),
        users=np.asarray(users, np.int32),
        items_of=np.asarray(item_rows, np.int32),
        timestamps=np.asarray(stamps, np.float64),
        fingerprint=_digest(directory / ITEMS_FILE, directory / INTERACTIONS_FILE),
        weights=np.asarray(weights, np.float32),
        negative_users=np.array([u for u, _, _ in negative_rows], np.int32),
        negative_items=np.array([i for _, i, _ in negative_rows], np.int32),
        negative_times=np.array([t for _, _, t in negative_rows], np.float64),
    )


@dataclass
class Split:
    """What models may learn from, and the queries to answer.

    train_users/train_items: interactions allowed for training and index building, in time order per user.
    histories[q]: the query's item indices in time order (oldest first); targets[q]: items to find.
    candidates: item indices that may be recalled (None = the whole catalogue).
    """

    protocol: str
    split: str
    train_users: np.ndarray
    train_items: np.ndarray
    train_times: np.ndarray
    train_weights: np.ndarray
    query_users: np.ndarray
    histories: list[np.ndarray]
    targets: list[np.ndarray]
    candidates: np.ndarray | None = None
    cold_items: np.ndarray | None = field(default=None)
    history_times: list[np.ndarray] | None = None  # unix seconds of each history's items

    def allowed(self, n_items: int) -> np.ndarray | None:
        """(N,) bool: the items this split ranks (None: all of them)."""
        if self.candidates is None:
            return None
        mask = np.zeros(n_items, bool)
        mask[self.candidates] = True
        return mask


def by_user_in_time(data: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Interactions sorted by (user, timestamp, file order): users, items, times, weights, and each
    user's [start, end) run in those arrays."""
    order = np.lexsort((np.arange(len(data.users)), data.timestamps, data.users))
    users, items, times = data.users[order], data.items_of[order], data.timestamps[order]
    weights = data.weights[order] if data.weights is not None else np.ones(len(order), np.float32)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(users)]
    return users, items, times, weights, list(zip(starts.tolist(), ends.tolist(), strict=True))


def leave_last_out(data: Dataset, split: str = "test") -> Split:
    """Per user: last = test target, the one before = valid target, earlier = history.

    For `test` the history (and the training data) includes the valid item; for `valid` it stops before.
    Users with fewer than 3 interactions give no query.
    """
    if split not in ("test", "valid"):
        raise ValueError(f"split must be test or valid, not {split!r}")
    users, items, times, weights, runs = by_user_in_time(data)
    keep = np.ones(len(users), bool)
    query_users, histories, targets, history_times = [], [], [], []
    held_out = 1 if split == "test" else 2
    for start, end in runs:
        if end - start < 3:
            continue
        target_pos = end - held_out
        keep[target_pos:end] = False
        query_users.append(users[start])
        histories.append(items[start:target_pos])
        history_times.append(times[start:target_pos])
        targets.append(items[target_pos : target_pos + 1])
    return Split(
        protocol="last",
        split=split,
        train_users=users[keep],
        train_items=items[keep],
        train_times=times[keep],
        train_weights=weights[keep],
        query_users=np.asarray(query_users, np.int32),
        histories=histories,
        targets=targets,
        history_times=history_times,
    )


def cold_items_split(data: Dataset, *, fraction: float = 0.2, seed: int = 0) -> Split:
    """A seeded share of the items with content become new: all their interactions leave training.

    Queries: users who interacted with a cold item; history = their warm items in time order;
    targets = their cold items; candidates = the cold items only.
    """
    has_content = np.array([bool(item.title or item.cover or item.frames or item.video) for item in data.items])
    pool = np.flatnonzero(has_content)
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(pool, size=int(round(fraction * len(pool))), replace=False))
    is_cold = np.zeros(data.n_items, bool)
    is_cold[cold] = True
    users, items, times, weights, runs = by_user_in_time(data)
    warm = ~is_cold[items]
    query_users, histories, targets, history_times = [], [], [], []
    for start, end in runs:
        mine, mine_warm = items[start:end], warm[start:end]
        if mine_warm.all() or not mine_warm.any():
            continue  # no cold target, or no warm history to query with
        query_users.append(users[start])
        histories.append(mine[mine_warm])
        history_times.append(times[start:end][mine_warm])
        targets.append(np.unique(mine[~mine_warm]))
    return Split(
        protocol="cold",
        split="test",
        train_users=users[warm],
        train_items=items[warm],
        train_times=times[warm],
        train_weights=weights[warm],
        query_users=np.asarray(query_users, np.int32),
        histories=histories,
        targets=targets,
        candidates=cold,
        cold_items=cold,
        history_times=history_times,
    )


def category_tags(data: Dataset, min_share: float = 0.005) -> list[frozenset[str]]:
    """Per item, its level-1 tags that at least `min_share` of the catalogue carries.

    Diversity counts categories (genres, sections), not free-text user tags that name one item each.
    """
    per_item = [frozenset(tag_at_level(t, 1) for t in item.tags) for item in data.items]
    counts = Counter(tag for tags in per_item for tag in tags)
    common = {tag for tag, n in counts.items() if n >= min_share * len(per_item)}
    return [tags & common for tags in per_item]


def tag_matrix(data: Dataset) -> tuple[tuple[str, ...], np.ndarray]:
    """The category tags (level 1) and each item's indicator row over them, (N, T) float32."""
    per_item = category_tags(data)
    vocab = tuple(sorted({tag for tags in per_item for tag in tags}))
    column = {tag: c for c, tag in enumerate(vocab)}
    matrix = np.zeros((len(per_item), len(vocab)), np.float32)
    for row, tags in enumerate(per_item):
        matrix[row, [column[t] for t in tags]] = 1.0
    return vocab, matrix
