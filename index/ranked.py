"""A channel's candidates as arrays: the recall path works on rows of the serving space, not on ids.

A row is an item's position in whatever the sources index (the snapshot's rows, then the items written
since; the harness's dense item numbers). Ids and provenance dicts are made only for the listed items:
a request handles a few hundred candidates, and per-candidate Python objects were most of its time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_ROWS = np.zeros(0, np.int64)


@dataclass(frozen=True)
class Ranked:
    rows: np.ndarray  # int64, best first, each row once
    scores: np.ndarray  # float64
    trigger: np.ndarray | None = None  # int64 row of the history item that recalled it (-1: none)
    interest: np.ndarray | None = None  # int64 number of the user interest that recalled it

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls) -> Ranked:
        return cls(NO_ROWS, np.zeros(0, np.float64))

    @classmethod
    def of(cls, rows, scores, trigger=None, interest=None) -> Ranked:
        """From anything array-like (lists, other dtypes)."""
        return cls(
            np.asarray(rows, np.int64).reshape(-1),
            np.asarray(scores, np.float64).reshape(-1),
            _ints(trigger),
            _ints(interest),
        )

    def take(self, index) -> Ranked:
        """A selection (an index array, a boolean mask or a slice) of every column."""
        return Ranked(self.rows[index], self.scores[index], _pick(self.trigger, index), _pick(self.interest, index))

    def normalized(self) -> Ranked:
        """Scores scaled to (0, 1] by the best one, so channels weigh alike in the merge."""
        if not len(self.rows):
            return self
        top = float(np.abs(self.scores).max()) or 1.0
        return Ranked(self.rows, self.scores / top, self.trigger, self.interest)


def _ints(values) -> np.ndarray | None:
    return None if values is None else np.asarray(values, np.int64).reshape(-1)


def _pick(column: np.ndarray | None, index) -> np.ndarray | None:
    return None if column is None else column[index]


def member_mask(values: np.ndarray, of: np.ndarray) -> np.ndarray:
    """np.isin(values, of) for the request path's sizes (hundreds of candidates against a history): a
    binary search in the sorted `of`, several times faster than np.isin's general machinery there."""
    values, of = np.asarray(values), np.sort(np.asarray(of).reshape(-1))
    if not len(of) or not len(values):
        return np.zeros(values.shape, bool)
    at = np.minimum(np.searchsorted(of, values), len(of) - 1)
    return of[at] == values


def top_order(scores: np.ndarray, n: int, ties: np.ndarray | None = None) -> np.ndarray:
    """Positions of the n best scores, best first; ties keep their input order, or go by `ties` ascending
    when given (a partition first, so only the candidates for the first n are sorted)."""
    n = min(n, len(scores))
    keep = np.arange(len(scores))
    if n < len(scores):
        cut = np.partition(-scores, n - 1)[n - 1]
        keep = np.flatnonzero(-scores <= cut)  # every tie at the cut, so the sort decides among them
    if ties is None:
        return keep[np.argsort(-scores[keep], kind="stable")[:n]]
    return keep[np.lexsort((ties[keep], -scores[keep]))[:n]]


def best_entries(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions of each distinct row's best entry (the highest score, the earliest on ties), best first:
    how a row found by several triggers keeps the one that found it best."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    _, first = np.unique(rows[order], return_index=True)
    return order[np.sort(first)]


def top_rows(rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best (row, score) pairs, best first; ties keep their input order."""
    order = top_order(scores, n)
    return rows[order], scores[order]
