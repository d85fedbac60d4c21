"""The behaviour-aware content function G and the two towers around it.

G sees only content: the concatenated frozen vectors of the feature encoders (e.g. text, cover image,
dual-stream joint) -> an MLP "filter" -> ECi. Beside it, id-based biases absorb what content cannot:
  item = ECi + EPi (hashed item-id embedding), user = ECu + EPu (hashed user-id embedding),
  ECu = attention pooling, with a recency bias, over G of the user's recent items (`user_tower="pool"`), or
  the sequence tower (`user_tower="seq"`): a causal transformer over G(item) + position + time-gap
  embeddings whose K interest queries, shifted by the user's tag preferences (cate-aware attention),
  attend over the sequence; training activates only the interest that best matches the target.
Score = <normalize(user), normalize(item)> / temperature. A new item has no EPi: it is served by ECi alone,
which is why G must carry the signal.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmrecall.core.features import AGE_BUCKETS, GAP_BUCKETS, hashed_buckets
from mmrecall.encoders.base import l2_normalize

CONFIG_FILE = "g.json"
WEIGHTS_FILE = "model.pt"
KNOWN_ITEMS_FILE = "known_items.json"  # ids G saw in training: only these get their item bias at serving
ACTIVE_INTERESTS_FILE = "active_interests.npz"  # sequence tower: users and the interests that serve them
# what early stopping held out, as ids: {"user", "history", "times", "target"} per user; the reindex tunes
# the recall set's parameters (trigger decay, merge weights) on it through the served path
HELD_OUT_FILE = "held_out.json"


@dataclass(frozen=True)
class GConfig:
    feature_encoders: tuple[str, ...] = ()  # encoder specs whose vectors are concatenated as G's input
    feature_dim: int = 0  # width of that concatenation
    hidden: int = 512  # MLP width
    dim: int = 128  # ECi / ECu / bias width
    dropout: float = 0.1
    history: int = 50  # the user tower pools this many recent items
    buckets: int = 1 << 15  # rows of each hashed id table
    hashes: int = 2  # hash functions per id (their embeddings are summed)
    temperature: float = 0.05
    use_bias: bool = True  # the id bias towers (EPi, EPu)
    user_tower: str = "pool"  # "pool" (attention pooling) or "seq" (the sequence tower)
    seq_layers: int = 2  # seq: causal self-attention blocks
    seq_heads: int = 2
    interests: int = 1  # seq: K interest vectors per user (single activation in training)
    cate_aware: bool = True  # seq: the user's tag-preference vector shifts the interest queries
    tag_vocab: tuple[str, ...] = ()  # seq: the tags (level 1) whose shares form the tag-preference vector
    seq_dropout: float = 0.0  # seq: dropout inside the transformer (its masks cost a sixth of a CPU step)
    extra: dict = field(default_factory=dict)  # training settings recorded with the checkpoint

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> GConfig:
        data = json.loads(text)
        data["feature_encoders"] = tuple(data.get("feature_encoders", ()))
        data["tag_vocab"] = tuple(data.get("tag_vocab", ()))
        return cls(**data)


class HashedEmbedding(nn.Module):
    def __init__(self, buckets: int, hashes: int, dim: int) -> None:
        super().__init__()
        self.buckets, self.hashes = buckets, hashes
        self.table = nn.Embedding(buckets, dim)
        nn.init.normal_(self.table.weight, std=0.01)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        buckets = torch.from_numpy(hashed_buckets(keys.numpy(), self.buckets, self.hashes))  # (n, hashes)
        return self.table(buckets).sum(dim=1)  # (n, dim)


class ContentG(nn.Module):
    """G: content features (n, F) -> ECi (n, dim). No ids, no counts."""

    def __init__(self, config: GConfig) -> None:
        super().__init__()
        h = config.hidden
        self.mlp = nn.Sequential(
            nn.LayerNorm(config.feature_dim),
            nn.Linear(config.feature_dim, h),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(h, h),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(h, config.dim),
        )

    @property
    def macs(self) -> int:
        """Multiply-adds of one item's forward pass through the MLP's linear layers."""
        return sum(m.in_features * m.out_features for m in self.mlp if isinstance(m, nn.Linear))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class UserTower(nn.Module):
    """ECu: attention over G of the recent items, query learned, with a learned bias per recency bucket."""

    def __init__(self, config: GConfig) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(config.dim) / math.sqrt(config.dim))
        self.key = nn.Linear(config.dim, config.dim)
        self.recency = nn.Embedding(AGE_BUCKETS, 1)
        nn.init.zeros_(self.recency.weight)
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """history (b, L, dim), oldest first, padded on the left; mask (b, L) True = a real item."""
        length = history.shape[1]
        ages = torch.arange(length - 1, -1, -1, device=history.device)  # (L,): 0 = the latest slot
        buckets = torch.clamp(torch.log2(ages.float() + 1).long(), max=AGE_BUCKETS - 1)  # (L,)
        # key(h) . q = h . (W^T q) + b . q: one matrix-vector product instead of a (b L, d) x (d, d) one
        query = self.key.weight.T @ self.query  # (dim,)
        scores = (history @ query + self.key.bias @ self.query) / math.sqrt(history.shape[-1])  # (b, L)
        scores = scores + self.recency(buckets).squeeze(-1)[None, :]  # (b, L)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # (b, L); a user without history gets zeros
        pooled = torch.bmm(weights.unsqueeze(1), history).squeeze(1)  # (b, dim)
        return pooled + self.out(pooled)


class SeqUserTower(nn.Module):
    """ECu_1..K from the sequence: a causal transformer over G(item) + position + time-gap embeddings, then K
    interest queries (plus a projection of the user's tag-preference vector when cate-aware) attend over
    its states; each interest adds the latest state, which has read the whole sequence."""

    def __init__(self, config: GConfig) -> None:
        super().__init__()
        d = config.dim
        self.config = config
        self.positions = nn.Embedding(config.history, d)  # row 0 = the latest slot
        self.gaps = nn.Embedding(GAP_BUCKETS, d)
        self.mask_token = nn.Parameter(torch.zeros(d))  # replaces a masked item (masked-item task)
        layer = nn.TransformerEncoderLayer(
            d, config.seq_heads, dim_feedforward=2 * d, dropout=config.seq_dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.seq_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.randn(config.interests, d) / math.sqrt(d))
        self.tag_query = nn.Linear(len(config.tag_vocab), d) if config.cate_aware and config.tag_vocab else None
        self.key = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.reconstruct = nn.Linear(d, d)  # masked-item task: a hidden slot's state -> its G vector
        nn.init.normal_(self.positions.weight, std=0.02)
        nn.init.normal_(self.gaps.weight, std=0.02)

    def states(
        self, history: torch.Tensor, mask: torch.Tensor, gaps: torch.Tensor | None, masked: torch.Tensor | None = None
    ) -> torch.Tensor:
        """history (b, L, d) G vectors, oldest first, left-padded; gaps (b, L) buckets; masked (b, L) True where
        the item is hidden (masked-item task) -> states (b, L, d)."""
        b, length, _ = history.shape
        if masked is not None:
            history = torch.where(masked.unsqueeze(-1), self.mask_token.expand_as(history), history)
        slots = torch.arange(length - 1, -1, -1, device=history.device)  # (L,): 0 = the latest slot
        x = history + self.positions(slots)[None]  # (b, L, d)
        if gaps is not None:
            x = x + self.gaps(gaps)
        x = x * mask.unsqueeze(-1)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
        return self.norm(self.encoder(x, mask=causal))  # (b, L, d)

    def forward(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        gaps: torch.Tensor | None = None,
        tag_pref: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The user after the latest item: tag_pref (b, T) -> interests (b, K, d), states (b, L, d)."""
        length = history.shape[1]
        prefs = tag_pref.unsqueeze(1) if tag_pref is not None else None
        interests, h = self.every_position(history, mask, gaps, prefs, masked, at=torch.tensor([length - 1]))
        return interests[:, 0], h

    def every_position(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        gaps: torch.Tensor | None = None,
        tag_prefs: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The user after each slot in `at` (default: every slot), reading only the slots up to it, so one
        pass trains on every next item of a window (as SASRec does). tag_prefs (b, Q, T): the tag
        preferences as they stood at each of those slots -> interests (b, Q, K, d), states (b, L, d)."""
        h = self.states(history, mask, gaps, masked)  # (b, L, d)
        length = h.shape[1]
        at = torch.arange(length) if at is None else at  # (Q,)
        queries = self.queries[None, None]  # (1, 1, K, d)
        if self.tag_query is not None and tag_prefs is not None:
            queries = queries + self.tag_query(tag_prefs).unsqueeze(2)  # cate-aware: tags steer what is read
        scores = torch.einsum("bqkd,bsd->bqks", queries.expand(h.shape[0], len(at), -1, -1), self.key(h))
        visible = mask[:, None, :] & (torch.arange(length)[None, :] <= at[:, None])[None]  # (b, Q, L)
        scores = (scores / math.sqrt(h.shape[-1])).masked_fill(~visible.unsqueeze(2), float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # (b, Q, K, L)
        pooled = torch.einsum("bqks,bsd->bqkd", weights, h)
        return pooled + self.out(pooled) + h[:, at].unsqueeze(2), h  # each adds the state at its own slot


class TwoTower(nn.Module):
    def __init__(self, config: GConfig) -> None:
        super().__init__()
        self.config = config
        self.g = ContentG(config)
        if config.user_tower not in ("pool", "seq"):
            raise ValueError(f"user_tower must be pool or seq, not {config.user_tower!r}")
        self.user_tower = UserTower(config) if config.user_tower == "pool" else SeqUserTower(config)
        self.item_bias = HashedEmbedding(config.buckets, config.hashes, config.dim)
        self.user_bias = HashedEmbedding(config.buckets, config.hashes, config.dim)

    def items(
        self, content: torch.Tensor, keys: torch.Tensor | None, known: torch.Tensor | None = None
    ) -> torch.Tensor:
        """normalize(ECi + EPi): EPi only where `known` (items seen in training) and biases are on."""
        if keys is None or not self.config.use_bias:
            return l2_normalize(content)
        bias = self.item_bias(keys)  # (n, dim)
        if known is not None:
            bias = bias * known.unsqueeze(-1).to(bias.dtype)
        return l2_normalize(content + bias)

    def users(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor | None,
        *,
        gaps: torch.Tensor | None = None,
        tag_pref: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """normalize(ECu + EPu) from G of the history (b, L, dim); EPu only for known users (keys given).
        (b, dim) for the pooling tower, (b, K, dim) interests for the sequence tower."""
        if self.config.user_tower == "seq":
            return self._with_bias(self.user_tower(history, mask, gaps, tag_pref)[0], keys)  # (b, K, dim)
        return self._with_bias(self.user_tower(history, mask), keys)  # (b, dim)

    def seq_users(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor | None,
        *,
        gaps: torch.Tensor | None = None,
        tag_prefs: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence tower after every slot (training): (normalized interests (b, L, K, dim), states)."""
        interests, states = self.user_tower.every_position(history, mask, gaps, tag_prefs, masked)
        return self._with_bias(interests, keys), states

    def _with_bias(self, common: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        """common (b, ..., dim) -> normalize(common + EPu), the bias broadcast over the middle axes."""
        if keys is None or not self.config.use_bias:
            return l2_normalize(common)
        bias = self.user_bias(keys)  # (b, dim)
        return l2_normalize(common + bias.reshape(bias.shape[0], *[1] * (common.dim() - 2), -1))


def save_g(model: TwoTower, directory: Path, report: dict | None = None, name: str = "g") -> Path:
    """g.json + model.pt, and an encoder.json so the registry loads the directory as a "g" encoder."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(model.config.to_json())
    (directory / "encoder.json").write_text(json.dumps({"name": name, "kind": "g", "text": None, "image": None}))
    if report is not None:
        (directory / "train_report.json").write_text(json.dumps(report, indent=2))
    return directory


def load_g(directory: str | Path) -> TwoTower:
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise ValueError(f"{directory}: not a G checkpoint ({CONFIG_FILE} missing)")
    model = TwoTower(GConfig.from_json((directory / CONFIG_FILE).read_text()))
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval()


def load_active_interests(directory: str | Path) -> dict[str, np.ndarray]:
    """user id -> (K,) bool, the interests that serve the user (empty for the pooling tower)."""
    path = Path(directory) / ACTIVE_INTERESTS_FILE
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return dict(zip(data["users"].tolist(), data["mask"], strict=True))
