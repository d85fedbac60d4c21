"""The user side of G at serving time, in numpy: no torch in the API process.

`export_user_tower` (torch side, at reindex) writes the user tower and the user-bias table as arrays;
`load_user_tower` gives `UserTowerNumpy` (the pooling tower) or `SeqTowerNumpy` (the sequence tower), which
compute normalize(ECu [+ EPu]) from G vectors of the request's history exactly as
encoders.content_g.TwoTower.users does. The sequence tower returns the user's active interests, (k, d).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

AGE_BUCKETS = 16
GAP_BUCKETS = 16
TAG_HISTORY = 200  # encoders.content_g.TAG_HISTORY: the items whose tags form the tag preferences
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


def gap_buckets_np(times: np.ndarray) -> np.ndarray:
    """Same buckets as encoders.content_g.gap_buckets: 0 = unknown, then log2(minutes since the previous + 1)."""
    gaps = np.diff(np.asarray(times, np.float64), prepend=np.nan) / 60.0
    with np.errstate(invalid="ignore"):
        buckets = 1 + np.minimum(np.log2(np.maximum(gaps, 0) + 1).astype(np.int64), GAP_BUCKETS - 2)
    return np.where(np.isfinite(gaps), buckets, 0)


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
        pref = np.zeros(len(self.tag_vocab), np.float32)
        for item_tags in tags[-TAG_HISTORY:]:
            for tag in {t.split("/", 1)[0] for t in item_tags}:
                if tag in self.tag_column:
                    pref[self.tag_column[tag]] += 1.0
        return pref / max(min(len(tags), TAG_HISTORY), 1)

    def __call__(self, history: np.ndarray, user_key: int | None = None, *, gaps: np.ndarray | None = None,
                 tag_pref: np.ndarray | None = None, user: str | None = None) -> np.ndarray:  # fmt: skip
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
        for i in range(self.layers):
            p = f"l{i}_"
            x = x + _causal_attention(_layer_norm(x, a[p + "norm1_w"], a[p + "norm1_b"]), a, p, self.heads)
            normed = _layer_norm(x, a[p + "norm2_w"], a[p + "norm2_b"])
            hidden = np.maximum(normed @ a[p + "lin1_w"].T + a[p + "lin1_b"], 0)  # (L, 2d) ReLU
            x = x + hidden @ a[p + "lin2_w"].T + a[p + "lin2_b"]
        h = _layer_norm(x, a["norm_w"], a["norm_b"])  # (L, d)
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
            rows = buckets_np(np.array([user_key], np.int64), len(self.bias_table), self.hashes)[0]
            users = users + self.bias_table[rows].sum(axis=0)[None]
        users = users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
        keep = self.active.get(user) if user is not None else None
        return (users if keep is None else users[keep]).astype(np.float32)


def load_user_tower(path: Path) -> UserTowerNumpy | SeqTowerNumpy:
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    return SeqTowerNumpy(arrays) if "queries" in arrays and "layers" in arrays else UserTowerNumpy(arrays)


def export_seq_tower(model, active: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    tower, config = model.user_tower, model.config
    arrays = {
        "positions": tower.positions.weight, "gaps": tower.gaps.weight, "queries": tower.queries,
        "norm_w": tower.norm.weight, "norm_b": tower.norm.bias, "key_w": tower.key.weight, "key_b": tower.key.bias,
        "out_w": tower.out.weight, "out_b": tower.out.bias,
    }  # fmt: skip
    if tower.tag_query is not None:
        arrays |= {"tag_w": tower.tag_query.weight, "tag_b": tower.tag_query.bias}
    for i, layer in enumerate(tower.encoder.layers):
        p = f"l{i}_"
        arrays |= {
            p + "in_w": layer.self_attn.in_proj_weight, p + "in_b": layer.self_attn.in_proj_bias,
            p + "out_w": layer.self_attn.out_proj.weight, p + "out_b": layer.self_attn.out_proj.bias,
            p + "norm1_w": layer.norm1.weight, p + "norm1_b": layer.norm1.bias,
            p + "norm2_w": layer.norm2.weight, p + "norm2_b": layer.norm2.bias,
            p + "lin1_w": layer.linear1.weight, p + "lin1_b": layer.linear1.bias,
            p + "lin2_w": layer.linear2.weight, p + "lin2_b": layer.linear2.bias,
        }  # fmt: skip
    out = {k: v.detach().numpy() for k, v in arrays.items()}
    out |= {"layers": np.array(config.seq_layers), "heads": np.array(config.seq_heads),
            "tag_vocab": np.array(config.tag_vocab, dtype=str)}  # fmt: skip
    if active:
        out["active_users"] = np.array(list(active), dtype=str)
        out["active_mask"] = np.stack(list(active.values())).astype(bool)
    return out


def export_user_tower(model, path: Path, active: dict[str, np.ndarray] | None = None) -> Path:
    """Write a TwoTower's user side (torch module) as arrays for load_user_tower; `active`: user id -> the
    interests that serve them (sequence tower)."""
    tower = model.user_tower
    if model.config.user_tower == "seq":
        arrays = export_seq_tower(model, active)
        arrays |= {"hashes": np.array(model.config.hashes), "history": np.array(model.config.history)}
        if model.config.use_bias:
            arrays["user_bias"] = model.user_bias.table.weight.detach().numpy()
        np.savez(path, **arrays)
        return path
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
