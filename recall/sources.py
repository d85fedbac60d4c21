"""What the recall channels ask of the item space they run over, and the request's tuning.

The API, the CLI, the benchmarks and the evaluation harness all answer from a serving state
(`mmrecall.recall.serving.ServiceSources`). Everything is in rows
(`mmrecall.index.ranked`): an item's position in the sources' space.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mmrecall.core.merge_weights import MergeWeights
from mmrecall.index.ranked import Ranked


class RecallSources(Protocol):
    """Rows excluded or deleted are never returned; every answer is best first."""

    def row(self, item: str) -> int | None: ...  # None: unknown, deleted or without a vector
    def item(self, row: int) -> str: ...
    def neighbors(self, row: int, n: int) -> tuple[np.ndarray, np.ndarray]: ...  # (rows, similarities)
    # several rows' neighbours as two (len(rows), m) arrays, rows padded with -1 (index.v2v.stack_neighbors)
    def neighbor_lists(self, rows: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]: ...
    # the v2v score without each trigger's cut in one search, where the source scans instead of reading lists
    # (a selective filter); None: read the triggers' lists (neighbor_lists)
    def summed_neighbors(
        self, triggers: Sequence[int], weights: np.ndarray, n: int, exclude: np.ndarray
    ) -> Ranked | None: ...
    def cluster_mates(self, triggers: Sequence[tuple[int, float]], n: int, exclude: np.ndarray) -> Ranked: ...
    def content_vectors(self, rows: np.ndarray) -> np.ndarray: ...  # (h, d) unit, G space
    def user_vector(self, history: np.ndarray, user: str | None) -> np.ndarray | None: ...
    def search(self, vector: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    # nearest items to each history row whose vector is given (a cache, e.g. the v2v table, may answer), n[i] for
    # the i-th, none of them in exclude or in an earlier row's list
    def nearest_each(
        self, rows: Sequence[int], vectors: np.ndarray, n: Sequence[int], exclude: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]: ...
    def categories(self, rows: np.ndarray) -> Sequence[Collection]: ...  # first-level tags per row
    # the id-based sequential model's next items after the history (None: no such model, or nothing known)
    def sequential(self, history: np.ndarray, n: int, exclude: np.ndarray) -> Ranked | None: ...
    # a non-personalised ranking's best rows (index.rankings: popular, trending, latest; None: none stored)
    def ranking(self, kind: str, n: int, exclude: np.ndarray) -> Ranked | None: ...


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
