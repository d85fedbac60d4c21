"""The user side of G at serving time, in numpy: no torch in the API process.

`export_user_tower` (torch side, at reindex) writes the user tower and the user-bias table as arrays;
`UserTowerNumpy` computes normalize(ECu [+ EPu]) from G vectors of the request's history exactly as
encoders.content_g.TwoTower.users does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

AGE_BUCKETS = 16
PRIMES = np.array([1_000_003, 998_244_353, 1_000_000_007, 67_867_967], np.int64)
OFFSETS = np.array([17, 31, 101, 7], np.int64)


def buckets_np(keys: np.ndarray, buckets: int, hashes: int) -> np.ndarray:
    """Same universal hashing as encoders.content_g.hashed_buckets."""
    mixed = (keys[:, None] % 2_147_483_647) * PRIMES[None, :hashes] + OFFSETS[None, :hashes]
    return np.remainder(mixed, buckets)


class UserTowerNumpy:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.query = arrays["query"]  # (d,)
        self.key_w, self.key_b = arrays["key_w"], arrays["key_b"]  # (d, d), (d,)
        self.out_w, self.out_b = arrays["out_w"], arrays["out_b"]
        self.recency = arrays["recency"]  # (AGE_BUCKETS,)
        self.bias_table = arrays.get("user_bias")  # (buckets, d) or absent
        self.hashes = int(arrays["hashes"])
        self.history = int(arrays["history"])

    @classmethod
    def load(cls, path: Path) -> UserTowerNumpy:
        with np.load(path) as data:
            return cls({key: data[key] for key in data.files})

    def __call__(self, history: np.ndarray, user_key: int | None = None) -> np.ndarray:
        """history: G vectors (L, d) of the latest items, oldest first -> unit user vector (d,)."""
        history = np.asarray(history[-self.history :], np.float32)
        if not len(history):
            pooled = np.zeros(self.query.shape[0], np.float32)
        else:
            ages = np.arange(len(history) - 1, -1, -1)
            bucket = np.minimum(np.log2(ages + 1).astype(int), AGE_BUCKETS - 1)
            scores = (history @ self.key_w.T + self.key_b) @ self.query / math.sqrt(history.shape[1])
            scores = scores + self.recency[bucket]
            weights = np.exp(scores - scores.max())
            pooled = (weights / weights.sum()) @ history
        user = pooled + (pooled @ self.out_w.T + self.out_b)
        if user_key is not None and self.bias_table is not None:
            rows = buckets_np(np.array([user_key], np.int64), len(self.bias_table), self.hashes)[0]
            user = user + self.bias_table[rows].sum(axis=0)
        norm = np.linalg.norm(user)
        return (user / norm if norm > 0 else user).astype(np.float32)


def export_user_tower(model, path: Path) -> Path:
    """Write a TwoTower's user side (torch module) as arrays for UserTowerNumpy."""
    tower = model.user_tower
    arrays = {
        "query": tower.query.detach().numpy(),
        "key_w": tower.key.weight.detach().numpy(), "key_b": tower.key.bias.detach().numpy(),
        "out_w": tower.out.weight.detach().numpy(), "out_b": tower.out.bias.detach().numpy(),
        "recency": tower.recency.weight.detach().numpy()[:, 0],
        "hashes": np.array(model.config.hashes), "history": np.array(model.config.history),
    }  # fmt: skip
    if model.config.use_bias:
        arrays["user_bias"] = model.user_bias.table.weight.detach().numpy()
    np.savez(path, **arrays)
    return path
