"""The non-personalised rankings a reindex stores for the fallback channels (`popular`, `trending`, `latest`):
what a user with no history, or too short a one, is recalled from.

- popular: interactions decayed by age, each counting 2^(-age / half_life), age from the newest
  interaction (so a dataset from years ago ranks as it did then);
- trending: interactions in the last `window` against the rate of the `baseline` before it, as a Poisson
  z-score (recent - expected) / sqrt(expected + 1): growth, not size;
- latest: items by creation time, newest first.

Each is (rows best first, their scores in (0, 1]) over the snapshot's rows.
"""

from __future__ import annotations

import numpy as np

KINDS = ("popular", "trending", "latest")
DAY = 86400.0


def item_rankings(
    n_rows: int,
    interaction_rows: np.ndarray,
    interaction_times: np.ndarray,
    created: np.ndarray,
    *,
    half_life_s: float = 7 * DAY,
    window_s: float = DAY,
    baseline_s: float = 28 * DAY,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """interaction_rows/times: (m,) each positive interaction's snapshot row and unix seconds; created: (n,)
    each row's creation time (NaN: unknown). -> {kind: (rows best first, scores)}."""
    rows = np.asarray(interaction_rows, np.int64)
    times = np.asarray(interaction_times, np.float64)
    out = {}
    now = float(times.max()) if len(times) else 0.0
    age = now - times
    decayed = np.bincount(rows, weights=np.exp2(-age / half_life_s), minlength=n_rows)
    out["popular"] = _ranked(decayed)
    recent = np.bincount(rows[age <= window_s], minlength=n_rows).astype(np.float64)
    before = np.bincount(rows[(age > window_s) & (age <= window_s + baseline_s)], minlength=n_rows)
    expected = before * (window_s / baseline_s)
    growth = (recent - expected) / np.sqrt(expected + 1.0)
    growth[recent < 2] = 0.0  # one interaction is not a trend
    out["trending"] = _ranked(growth)
    created = np.asarray(created, np.float64)
    known = np.flatnonzero(np.isfinite(created))
    order = known[np.argsort(-created[known], kind="stable")]
    out["latest"] = (order, 1.0 / (1.0 + np.arange(len(order), dtype=np.float64)))  # rank-based: 1, 1/2, ...
    return out


def _ranked(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows with a positive score, best first (ties by row), scores scaled so the best is 1."""
    rows = np.flatnonzero(scores > 0)
    rows = rows[np.argsort(-scores[rows], kind="stable")]
    top = float(scores[rows[0]]) if len(rows) else 1.0
    return rows.astype(np.int64), (scores[rows] / top).astype(np.float64)
