"""Recall channels as scorers: each fits on a split's training data and scores every item per query.

Dense scores over the catalogue let the harness rank exactly (full ranking, pessimistic ties); the
service answers the same scoring with ANN indexes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mmrecall.core.dataset import Dataset, Split, tag_matrix
from mmrecall.encoders.dataset import encode_dataset
from mmrecall.finetune.g_train import GTrainConfig, GTrainer, Interactions, best_interest_scores, make_config
from mmrecall.finetune.sasrec import DROPOUTS, SASRecConfig, fit_faithful


@dataclass
class EvalContext:
    data: Dataset
    cache: Path | None = None
    encoder: str = "text-minilm"  # the encoder behind mmrecall's own v2v channel (the served default)
    g_features: tuple[str, ...] = ()  # encoders whose vectors feed G (default: text-minilm + `encoder`)
    g_train: dict = field(default_factory=dict)  # GTrainConfig overrides (e.g. fewer epochs in tests)
    sasrec_train: dict = field(default_factory=dict)  # SASRecConfig overrides
    progress: bool = True
    workdir: Path | None = None  # where the served rows' homes are built (a temporary directory when None)
    _vectors: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict = field(default_factory=dict)  # trained models shared between channels of one split

    def vectors(self, encoder_name: str) -> np.ndarray:
        if encoder_name not in self._vectors:
            self._vectors[encoder_name] = encode_dataset(
                self.data, encoder_name, cache=self.cache, progress=self.progress
            )
        return self._vectors[encoder_name]


class Channel(ABC):
    name: str
    param_grid: dict[str, list] = {}  # tuned on the valid split, when given
    uses_times = False  # scores() also takes `times`: unix seconds of each history's items

    def __init__(self, **params) -> None:
        self.params = params

    @abstractmethod
    def fit(self, ctx: EvalContext, split: Split) -> None: ...

    @abstractmethod
    def scores(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """float32 (len(users), n_items); higher is better."""


class RandomChannel(Channel):
    name = "random"

    def fit(self, ctx: EvalContext, split: Split) -> None:
        self.n_items = ctx.data.n_items
        self.rng = np.random.default_rng(0)

    def scores(self, users, histories):
        return self.rng.random((len(users), self.n_items), dtype=np.float32)


class PopularChannel(Channel):
    name = "popular"

    def fit(self, ctx: EvalContext, split: Split) -> None:
        self.counts = np.bincount(split.train_items, minlength=ctx.data.n_items).astype(np.float32)

    def scores(self, users, histories):
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()


def last_distinct(history: np.ndarray, n: int) -> np.ndarray:
    """The n most recent distinct items, most recent first."""
    seen: dict[int, None] = {}
    for item in history[::-1]:
        seen.setdefault(int(item), None)
        if len(seen) == n:
            break
    return np.fromiter(seen, np.int64, len(seen))


class ItemCFChannel(Channel):
    """Cosine co-occurrence: sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|), summed over the last 20 items."""

    name = "itemcf"

    def fit(self, ctx: EvalContext, split: Split) -> None:
        n_users, n_items = ctx.data.n_users, ctx.data.n_items
        x = sp.csr_matrix(
            (np.ones(len(split.train_items), np.float32), (split.train_users, split.train_items)),
            shape=(n_users, n_items),
        )
        x.data[:] = 1.0  # duplicates summed by csr_matrix: a user counts once per item
        self.x = x
        counts = np.asarray(x.sum(axis=0)).ravel()
        with np.errstate(divide="ignore"):
            self.inv_sqrt = np.where(counts > 0, 1.0 / np.sqrt(counts), 0.0).astype(np.float32)
        self.n_recent = self.params.get("n_recent", 20)

    def scores(self, users, histories):
        rows, cols, vals = [], [], []
        for r, history in enumerate(histories):
            recent = last_distinct(history, self.n_recent)
            rows.extend([r] * len(recent))
            cols.extend(recent.tolist())
            vals.extend(self.inv_sqrt[recent].tolist())
        h = sp.csr_matrix((vals, (rows, cols)), shape=(len(histories), self.x.shape[1]), dtype=np.float32)
        co = (h @ self.x.T) @ self.x  # (b, n_items): sum_h c_hj / sqrt(n_h)
        return np.asarray(co.todense(), np.float32) * self.inv_sqrt[None, :]


class MFChannel(Channel):
    """Matrix factorisation: implicit's ALS (Hu, Koren & Volinsky, ICDM 2008) on the user x item matrix of
    training interactions, confidence 1 + alpha per interaction; an item scores by user . item factors.
    Factors, regularisation and alpha tuned on the valid split."""

    name = "mf"
    variant = "mf"  # the harness reports the training under this key
    param_grid = {"factors": [64, 128], "regularization": [0.01, 0.1], "alpha": [1.0, 10.0]}

    def fit(self, ctx: EvalContext, split: Split) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        n_users, n_items = ctx.data.n_users, ctx.data.n_items
        x = sp.csr_matrix(
            (np.ones(len(split.train_items), np.float32), (split.train_users, split.train_items)),
            shape=(n_users, n_items),
        )
        x.data[:] = 1.0 + self.params.get("alpha", 10.0)  # duplicates summed by csr_matrix: one per pair
        started = time.time()
        model = AlternatingLeastSquares(
            factors=self.params.get("factors", 64),
            regularization=self.params.get("regularization", 0.01),
            iterations=self.params.get("iterations", 15),
            random_state=0,
            calculate_training_loss=False,
        )
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # ALS parallelises over users itself; BLAS threads inside it thrash
            model.fit(x, show_progress=False)
        self.users, self.items = np.asarray(model.user_factors), np.asarray(model.item_factors)
        ctx.models[((id(split), self.name), "report")] = {"seconds": round(time.time() - started, 2)}

    def scores(self, users, histories):
        return (self.users[np.asarray(users)] @ self.items.T).astype(np.float32)


def train_sequences(split: Split, n_users: int) -> list[np.ndarray]:
    """Each user's training items in time order (split.train_* are sorted by user, then time)."""
    cuts = np.searchsorted(split.train_users, np.arange(n_users + 1))
    return [split.train_items[cuts[u] : cuts[u + 1]] for u in range(n_users)]


class SASRecChannel(Channel):
    """SASRec on item ids (finetune.sasrec): the sequential baseline, as a faithful run trains it. Dropout
    and the epoch count are chosen on each user's last training interaction (the valid item under the test
    split), then a fresh model trains on the whole history for that many epochs."""

    name = "sasrec"
    variant = "sasrec"  # the harness reports the training under this key

    def fit(self, ctx: EvalContext, split: Split) -> None:
        options = {**ctx.sasrec_train, **self.params}
        dropouts = (options.pop("dropout"),) if "dropout" in options else DROPOUTS
        config = SASRecConfig(**options)
        sequences = train_sequences(split, ctx.data.n_users)
        self.trainer, report = fit_faithful(ctx.data.n_items, sequences, config, dropouts)
        self.tuned = {"dropout": report["dropout"], "epochs": report["best_epoch"]}
        ctx.models[((id(split), self.variant), "report")] = report

    def scores(self, users, histories):
        return self.trainer.scores(list(histories)).numpy()


class VectorV2VChannel(Channel):
    """v2v from content vectors: score(j) = sum over the latest triggers t of w_t * cos(t, j),
    with recency weights w_t = decay ** age (age 0 = the latest item)."""

    param_grid = {"decay": [1.0, 0.8, 0.5]}

    def __init__(self, name: str, encoder: str | Callable[[EvalContext], str], **params) -> None:
        super().__init__(**params)
        self.name, self.encoder = name, encoder

    def fit(self, ctx: EvalContext, split: Split) -> None:
        encoder = self.encoder(ctx) if callable(self.encoder) else self.encoder
        self.vectors = ctx.vectors(encoder)
        self.n_recent = self.params.get("n_recent", 20)
        self.decay = self.params.get("decay", 0.8)

    def scores(self, users, histories):
        out = np.zeros((len(histories), self.vectors.shape[0]), np.float32)
        for r, history in enumerate(histories):
            recent = last_distinct(history, self.n_recent)
            weights = (self.decay ** np.arange(len(recent))).astype(np.float32)  # (t,)
            query = weights @ self.vectors[recent]  # (d,): sum_t w_t v_t, so the dot gives the weighted sum
            out[r] = self.vectors @ query
        return out


# the sequence tower with elastic K (up to 4 interests) over the latest 30 items (tags: the latest 200)
SEQ = {"user_tower": "seq", "interests": 4, "history": 30}
G_VARIANTS = {  # ablation row -> (training overrides, model overrides); "personal": the served training
    "personal": ({}, {}),
    "personal_nobias": ({}, {"use_bias": False}),
    "personal_nologq": ({"log_q": False}, {}),
    "personal_nohard": ({"hard_negatives": False}, {}),
    "personal_seq": ({}, SEQ),
    "personal_seq_nocate": ({}, {**SEQ, "cate_aware": False}),
    "personal_seq_nomask": ({"mask_loss": 0.0}, SEQ),
    "personal_seq_k1": ({}, {**SEQ, "interests": 1}),
    "personal_seq_nofuture": ({"future_loss": 0.0}, SEQ),
}


def trained_g(ctx: EvalContext, split: Split, variant: str):
    """Train G (once per split and variant) on the split's training interactions; returns the trainer."""
    key = (id(split), variant)
    if key not in ctx.models:
        specs = ctx.g_features or tuple(dict.fromkeys(["text-minilm", ctx.encoder]))
        features = np.concatenate([ctx.vectors(spec) for spec in specs], axis=1)
        train_overrides, model_overrides = G_VARIANTS[variant]
        item_tags = None
        if model_overrides.get("user_tower") == "seq":
            vocab, item_tags = tag_matrix(ctx.data)
            model_overrides = {**model_overrides, "tag_vocab": vocab}
        config = make_config(features, specs, **model_overrides)
        trainer = GTrainer(
            config,
            features,
            [i.id for i in ctx.data.items],
            ctx.data.user_ids,
            GTrainConfig(**{**ctx.g_train, **train_overrides}),
            item_tags=item_tags,
        )
        report = trainer.fit(Interactions(split.train_users, split.train_items, split.train_weights, split.train_times))
        ctx.models[key] = trainer
        ctx.models[(key, "report")] = report
    return ctx.models[key]


class GChannel(Channel):
    """An ablation of G's training, scored exactly (not served): the user tower over the history (+ EPu for
    known users) against every item's normalize(ECi + EPi) (EPi only for items seen in training). The
    served `personal` row is evaluation.recall_channels'; these rows say what a training choice is worth."""

    def __init__(self, name: str, variant: str) -> None:
        super().__init__()
        self.name, self.variant = name, variant

    uses_times = True

    def fit(self, ctx: EvalContext, split: Split) -> None:
        import torch

        self.torch = torch
        self.trainer = trained_g(ctx, split, self.variant)
        self.items = self.trainer.item_matrix(self.trainer.known)
        self.known_users = np.zeros(ctx.data.n_users, bool)
        self.known_users[np.unique(split.train_users)] = True

    def user_vectors(self, users, histories, times=None):
        """(b, d), or (b, K, d) interests, and (b, K) the interests that serve each user (None: all)."""
        known = self.known_users[users]
        vectors = None
        for rows, user_ids in ((~known, None), (known, users[known])):  # EPu only for users seen in training
            if not rows.any():
                continue
            pick = np.flatnonzero(rows)
            part = self.trainer.user_matrix(
                [histories[i] for i in pick], user_ids, [times[i] for i in pick] if times is not None else None
            )
            if vectors is None:
                vectors = part.new_empty((len(users), *part.shape[1:]))
            vectors[self.torch.from_numpy(rows)] = part
        active = self.trainer.active_interests(np.where(known, users, -1), len(users))
        if active is not None:
            active[self.torch.from_numpy(~known)] = True  # no record for an unknown user: all interests
        return vectors, active

    def scores(self, users, histories, times=None):
        vectors, active = self.user_vectors(users, histories, times)
        return best_interest_scores(vectors, self.items, active).numpy()


class MultiInterestSeqChannel(GChannel):
    """The sequence tower's interests as separate queries: each active interest gets a quota of the list
    by its share of the user's activations, and fills it with its own nearest items."""

    def __init__(self) -> None:
        super().__init__("multi_interest_seq", "personal_seq")

    def fit(self, ctx: EvalContext, split: Split) -> None:
        super().fit(ctx, split)
        self.allowed = split.allowed(ctx.data.n_items)  # warm items under the cold protocol get no quota

    def scores(self, users, histories, times=None, n: int = 200):
        vectors, active = self.user_vectors(users, histories, times)
        if vectors.dim() == 2:
            return (vectors @ self.items.T).numpy()
        per_interest = self.torch.einsum("bkd,nd->bkn", vectors, self.items).numpy()  # (b, K, N)
        if self.allowed is not None:
            per_interest[:, :, ~self.allowed] = -np.inf
        shares = self.trainer.activations[np.asarray(users)].astype(np.float64) + 1e-9  # (b, K)
        shares = shares * active.numpy()
        out = np.full((len(users), self.items.shape[0]), -np.inf, np.float32)
        for row in range(len(users)):
            per_interest[row][:, histories[row]] = -np.inf  # seen items never fill a quota
            quota = np.minimum(np.floor(n * shares[row] / shares[row].sum()).astype(int), self.items.shape[0])
            for k in np.flatnonzero(quota):
                top = np.argpartition(-per_interest[row, k], quota[k] - 1)[: quota[k]]
                out[row, top] = np.maximum(out[row, top], per_interest[row, k, top])
        return out
