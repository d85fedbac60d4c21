"""The user side of G at serving time, in numpy: no torch in the API process.

`mmrecall.finetune.export` (torch side, at reindex) writes the user tower and the user-bias table as arrays;
`load_user_tower` gives `UserTowerNumpy` (the pooling tower) or `SeqTowerNumpy` (the sequence tower), which
compute normalize(ECu [+ EPu]) from G vectors of the request's history exactly as
encoders.content_g.TwoTower.users does. The sequence tower returns the user's active interests, (k, d).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mmrecall.core.features import AGE_BUCKETS, hashed_buckets, tag_preferences


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
            rows = hashed_buckets(np.array([user_key], np.int64), len(self.bias_table), self.hashes)[0]
            user = user + self.bias_table[rows].sum(axis=0)
        norm = np.linalg.norm(user)
        return (user / norm if norm > 0 else user).astype(np.float32)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _causal_attention(x: np.ndarray, a: dict, prefix: str, heads: int) -> np.ndarray:
    """torch.nn.MultiheadAttention (batch_first, eval) with a causal mask, for one sequence x (L, d)."""
    length, dim = x.shape
    qkv = x @ a[f"{prefix}in_w"].T + a[f"{prefix}in_b"]  # (L, 3d)
    q, k, v = (qkv[:, i * dim : (i + 1) * dim].reshape(length, heads, -1).transpose(1, 0, 2) for i in range(3))
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(dim // heads)  # (h, L, L)
    scores = np.where(np.triu(np.ones((length, length), bool), 1)[None], -np.inf, scores)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    out = (weights @ v).transpose(1, 0, 2).reshape(length, dim)  # (L, d)
    return out @ a[f"{prefix}out_w"].T + a[f"{prefix}out_b"]


def transformer_blocks(x: np.ndarray, a: dict, layers: int, heads: int) -> np.ndarray:
    """x (L, d) through `layers` pre-LayerNorm causal blocks (finetune.export.encoder_layer_arrays' `l{i}_*`
    arrays) and the final LayerNorm (`norm_w`, `norm_b`): torch's TransformerEncoder with norm_first, in eval."""
    for i in range(layers):
        p = f"l{i}_"
        x = x + _causal_attention(_layer_norm(x, a[p + "norm1_w"], a[p + "norm1_b"]), a, p, heads)
        normed = _layer_norm(x, a[p + "norm2_w"], a[p + "norm2_b"])
        hidden = np.maximum(normed @ a[p + "lin1_w"].T + a[p + "lin1_b"], 0)  # (L, ff) ReLU
        x = x + hidden @ a[p + "lin2_w"].T + a[p + "lin2_b"]
    return _layer_norm(x, a["norm_w"], a["norm_b"])


class SeqTowerNumpy:
    """encoders.content_g.SeqUserTower + the user bias, for one request: G vectors of the history (oldest
    first), their time-gap buckets and tag-preference vector -> the user's active interests (k, d)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.a = arrays
        self.history = int(arrays["history"])
        self.layers, self.heads, self.hashes = int(arrays["layers"]), int(arrays["heads"]), int(arrays["hashes"])
        self.tag_vocab = [str(t) for t in arrays["tag_vocab"]]
        self.tag_column = {tag: c for c, tag in enumerate(self.tag_vocab)}
        self.bias_table = arrays.get("user_bias")
        users = [str(u) for u in arrays.get("active_users", np.zeros(0, str))]
        self.active = dict(zip(users, arrays.get("active_mask", np.zeros((0, 0), bool)), strict=True))

    def tag_preferences(self, tags: list[list[str]]) -> np.ndarray:
        """Per history item its tags (level 1 is read) -> the mean indicator over the tower's tag vocabulary."""
        return tag_preferences(tags, self.tag_column)

    def __call__(
        self,
        history: np.ndarray,
        user_key: int | None = None,
        *,
        gaps: np.ndarray | None = None,
        tag_pref: np.ndarray | None = None,
        user: str | None = None,
    ) -> np.ndarray:
        a, length = self.a, self.history
        real = np.asarray(history[-length:], np.float32)
        x = np.zeros((length, real.shape[1]), np.float32)  # left-padded like training
        x[length - len(real) :] = real
        mask = np.zeros(length, bool)
        mask[length - len(real) :] = True
        x = x + a["positions"][np.arange(length - 1, -1, -1)]
        if gaps is not None:
            padded = np.zeros(length, np.int64)
            tail = np.asarray(gaps[-length:], np.int64)
            padded[length - len(tail) :] = tail
            x = x + a["gaps"][padded]
        x = x * mask[:, None]
        h = transformer_blocks(x, a, self.layers, self.heads)  # (L, d)
        queries = a["queries"]  # (K, d)
        if "tag_w" in a and tag_pref is not None:
            queries = queries + (tag_pref @ a["tag_w"].T + a["tag_b"])[None]
        scores = queries @ (h @ a["key_w"].T + a["key_b"]).T / np.sqrt(h.shape[1])  # (K, L)
        scores = np.where(mask[None], scores, -np.inf)
        weights = np.exp(scores - scores.max(axis=1, keepdims=True)) if mask.any() else np.zeros_like(scores)
        weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-30)
        pooled = weights @ h  # (K, d)
        users = pooled + (pooled @ a["out_w"].T + a["out_b"]) + h[-1][None]
        if user_key is not None and self.bias_table is not None:
            rows = hashed_buckets(np.array([user_key], np.int64), len(self.bias_table), self.hashes)[0]
            users = users + self.bias_table[rows].sum(axis=0)[None]
        users = users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
        keep = self.active.get(user) if user is not None else None
        return (users if keep is None else users[keep]).astype(np.float32)


def tower_from_arrays(arrays: dict[str, np.ndarray]) -> UserTowerNumpy | SeqTowerNumpy:
    """The pooling or the sequence tower, whichever the arrays hold (mmrecall.finetune.export wrote them)."""
    return SeqTowerNumpy(arrays) if "queries" in arrays and "layers" in arrays else UserTowerNumpy(arrays)


def load_user_tower(path: Path) -> UserTowerNumpy | SeqTowerNumpy:
    with np.load(path) as data:
        return tower_from_arrays({key: data[key] for key in data.files})
