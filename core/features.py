"""Torch-free helpers that training (G, the towers) and serving (the numpy towers) must compute identically:
id hashing into embedding buckets, time-gap buckets, and the tag-preference window. One copy, used by both."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

AGE_BUCKETS = 16  # recency buckets: log2(positions back from the latest item)
GAP_BUCKETS = 16  # time-gap buckets: 0 = unknown, then log2(minutes since the previous item + 1)
TAG_HISTORY = 200  # sequence tower: the latest items whose tags form the user's tag-preference vector
# one universal hash per column of a hashed id embedding (G's item and user bias tables use `hashes` of them)
HASH_PRIMES = np.array([1_000_003, 998_244_353, 1_000_000_007, 67_867_967], np.int64)
HASH_OFFSETS = np.array([17, 31, 101, 7], np.int64)


def id_key(value: str) -> int:
    """A stable 63-bit key for an item or user id (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little") >> 1


def keys_of(ids: Iterable[str]) -> np.ndarray:
    """(n,) int64 keys of ids, in order."""
    ids = list(ids)
    return np.fromiter((id_key(i) for i in ids), np.int64, len(ids))


def hashed_buckets(keys: np.ndarray, buckets: int, hashes: int) -> np.ndarray:
    """(n,) int64 keys -> (n, hashes) bucket indices, one universal hash per column."""
    keys = np.asarray(keys, np.int64)
    mixed = (keys[:, None] % 2_147_483_647) * HASH_PRIMES[None, :hashes] + HASH_OFFSETS[None, :hashes]  # (n, hashes)
    return np.remainder(mixed, buckets)


def gap_buckets(times: np.ndarray) -> np.ndarray:
    """Unix seconds of a user's items in time order -> (n,) gap bucket of each item; the first is unknown (0)."""
    gaps = np.diff(np.asarray(times, np.float64), prepend=np.nan) / 60.0
    with np.errstate(invalid="ignore"):
        buckets = 1 + np.minimum(np.log2(np.maximum(gaps, 0) + 1).astype(np.int64), GAP_BUCKETS - 2)
    return np.where(np.isfinite(gaps), buckets, 0)


def tag_preferences(tags: list[list[str]], column: dict[str, int]) -> np.ndarray:
    """Per history item its tags (the first level is read), oldest first -> (T,) the mean indicator over a
    tag vocabulary (tag -> column) across the latest TAG_HISTORY items."""
    pref = np.zeros(len(column), np.float32)
    for item_tags in tags[-TAG_HISTORY:]:
        for tag in {t.split("/", 1)[0] for t in item_tags}:
            if tag in column:
                pref[column[tag]] += 1.0
    return pref / max(min(len(tags), TAG_HISTORY), 1)
