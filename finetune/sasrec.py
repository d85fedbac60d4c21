"""SASRec (Kang & McAuley, ICDM 2018): the id-based sequential model, as the evaluation's baseline and as the
served `sequential` channel (`mmrecall train --sequential` trains it beside G; `recall.sequential` serves it
in numpy).

Item-id embeddings (scaled by sqrt(d)) + learned positions, `blocks` pre-LayerNorm causal self-attention
blocks with point-wise feed-forward layers, a final LayerNorm; the output at each position scores every
item by a dot product with the shared item embeddings. Trained on every position of every user's sequence
with a full softmax over the catalogue (cross-entropy, which beats the paper's one-negative BCE by a wide
margin: Klenitskiy & Vasilev, RecSys 2023). The protocol of a faithful run: train with each user's last
training interaction held out until its hitRate@50 has not improved for `patience` evaluations, then
(`retrain`) train a fresh model on every interaction, the held-out ones included, for the best epoch
count; the held-out item is the user's most recent and most telling transition, which a model that only
stopped on it never learns from. Ids only: an item never seen in training has an untrained embedding,
which is what SASRec does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrecall.core.dataset import by_user_in_time, load_dataset
from mmrecall.finetune.common import EarlyStopping, EtaLogger, native_bf16
from mmrecall.finetune.export import encoder_layer_arrays

log = logging.getLogger(__name__)
SEQUENTIAL_FILE = "sequential.npz"  # in a G checkpoint: the sequential channel's arrays (sasrec_arrays)
DROPOUTS = (0.2, 0.5)  # chosen on the held-out items, as a faithful run does


@dataclass
class SASRecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 200  # the latest items a user is represented by
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 16  # 610 MovieLens users: small batches give enough optimizer steps per epoch
    epochs: int = 200
    patience: int = 10  # evaluations without a better held-out hitRate@50 before stopping (20 epochs)
    eval_every: int = 2  # epochs between held-out evaluations
    retrain: bool = True  # then train afresh on everything (held-out items too) for the best epoch count
    seed: int = 0
    # bfloat16 autocast: the full-softmax logits dominate, and AMX/AVX512-BF16 halve them; None: where the CPU has it
    bf16: bool | None = None


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.items = nn.Embedding(n_items + 1, config.dim, padding_idx=0)  # row 0 = padding; item i at i + 1
        self.positions = nn.Embedding(config.max_len, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            dim_feedforward=config.dim,
            dropout=config.dropout,
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        nn.init.normal_(self.items.weight, std=config.dim**-0.5)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """sequence (b, L) of item index + 1, left-padded with 0 -> hidden states (b, L, dim)."""
        length = sequence.shape[1]
        x = self.items(sequence) * self.config.dim**0.5 + self.positions.weight[-length:][None]  # (b, L, d)
        x = self.dropout(x) * (sequence > 0).unsqueeze(-1)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)  # (L, L) True = blocked
        # padded slots are keys no query reads (each slot still reads itself, so a padded query's row is not
        # empty): without this a short history's attention is diluted by up to 199 zero vectors
        blocked = (causal[None] | (sequence == 0)[:, None, :]) & ~torch.eye(length, dtype=torch.bool)  # (b, L, L)
        x = self.encoder(x, mask=blocked.repeat_interleave(self.config.heads, dim=0))  # (b * heads, L, L)
        return self.norm(x)

    def item_table(self) -> torch.Tensor:
        return self.items.weight[1:]  # (N, d)


def training_windows(sequences: list[np.ndarray], length: int) -> list[np.ndarray]:
    """Each sequence cut from its end into windows of `length` + 1 items that overlap by one, so every
    transition is a target exactly once: a user with 2,000 ratings trains on all of them, not on the latest
    `length` (which left 41% of ml-latest-small's ratings unseen)."""
    windows = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            windows.append(seq[max(0, end - length - 1) : end])
            end -= length
    return windows


def left_padded(sequences: list[np.ndarray], length: int, shift: int = 1) -> np.ndarray:
    """(b, length) int64: each sequence's latest `length` entries + shift, left-padded with 0."""
    out = np.zeros((len(sequences), length), np.int64)
    for row, seq in enumerate(sequences):
        tail = np.asarray(seq[-length:], np.int64)
        if len(tail):
            out[row, length - len(tail) :] = tail + shift
    return out


class SASRecTrainer:
    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.config, self.n_items = config, n_items
        self.model = SASRec(n_items, config)

    def fit(self, sequences: list[np.ndarray]) -> dict:
        """sequences: item indices per user in time order. Each user's last item is held out to choose the
        epoch count; with `retrain`, a fresh model then trains on all of it for that many epochs."""
        started = time.time()
        usable = [s for s in sequences if len(s) >= 2]
        held = [(s[:-1], int(s[-1])) for s in usable if len(s) >= 3]
        report = self._train([s[:-1] if len(s) >= 3 else s for s in usable], held, self.config.epochs)
        if self.config.retrain and held:
            self.refit(usable, report["best_epoch"])
            report["retrained_epochs"] = report["best_epoch"]
        self.model.eval()
        return {**report, "seconds": round(time.time() - started, 1)}

    def refit(self, sequences: list[np.ndarray], epochs: int) -> None:
        """A fresh model trained on every interaction for `epochs` (the count chosen on held-out items)."""
        torch.manual_seed(self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)
        self.model = SASRec(self.n_items, self.config)
        self._train([s for s in sequences if len(s) >= 2], [], epochs)
        self.model.eval()

    def _train(self, train: list[np.ndarray], held: list[tuple[np.ndarray, int]], epochs: int) -> dict:
        """Train for up to `epochs`, evaluating on `held` (none: no evaluation, the last epoch is kept)."""
        cfg = self.config
        train = training_windows(train, cfg.max_len)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
        best = EarlyStopping(cfg.patience * cfg.eval_every)  # patience counts evaluations
        started, history = time.time(), []
        steps_per_epoch = -(-len(train) // cfg.batch_size)
        eta, step = EtaLogger("sasrec" if held else "sasrec retrain", epochs * steps_per_epoch), 0
        bf16 = native_bf16() if cfg.bf16 is None else cfg.bf16
        for epoch in range(1, epochs + 1):
            self.model.train()
            losses, order = [], self.rng.permutation(len(train))
            for start in range(0, len(train), cfg.batch_size):
                batch = [train[i] for i in order[start : start + cfg.batch_size]]
                padded = left_padded(batch, cfg.max_len + 1)  # (b, L + 1): inputs and next-item targets
                inputs, targets = torch.from_numpy(padded[:, :-1]), torch.from_numpy(padded[:, 1:])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    hidden = self.model(inputs)  # (b, L, d)
                    real = (targets > 0) & (inputs > 0)  # (b, L): a next item after a real one, not the first item
                    logits = hidden[real] @ self.model.item_table().T  # (positions, N)
                loss = F.cross_entropy(logits.float(), targets[real] - 1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                step += 1
                eta(step, {"epoch": epoch, "loss": float(np.mean(losses[-20:]))})
            if not held or (epoch % cfg.eval_every and epoch != epochs):
                continue
            hit = self.hit_rate([h for h, _ in held], np.array([t for _, t in held]))
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "held_out_hitrate@50": hit})
            log.info("sasrec epoch %d: loss %.4f, held-out hitrate@50 %.4f", epoch, np.mean(losses), hit)
            if not best.update(epoch, hit, self.model) and best.stop(epoch):
                break
        best.restore(self.model)
        return {
            "best_epoch": best.epoch,
            "valid_hitrate@50": best.score,
            "trained_s": round(time.time() - started, 1),
            "epochs": history,
        }

    def scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(b, N) scores of every item after each history."""
        self.model.eval()
        with torch.no_grad():
            out = []
            for start in range(0, len(histories), 256):
                inputs = torch.from_numpy(left_padded(histories[start : start + 256], self.config.max_len))
                out.append(self.model(inputs)[:, -1] @ self.model.item_table().T)
            return torch.cat(out)

    def hit_rate(self, histories: list[np.ndarray], targets: np.ndarray, k: int = 50) -> float:
        scores = self.scores(histories)
        for row, history in enumerate(histories):
            scores[row, torch.from_numpy(np.asarray(history, np.int64))] = float("-inf")
        target_scores = scores[torch.arange(len(targets)), torch.from_numpy(targets)]
        ranks = (scores >= target_scores[:, None]).sum(dim=1) - 1
        return float((ranks < k).float().mean())


def fit_faithful(
    n_items: int, sequences: list[np.ndarray], config: SASRecConfig, dropouts: tuple[float, ...] = DROPOUTS
) -> tuple[SASRecTrainer, dict]:
    """The faithful protocol: one early-stopped training per dropout on each user's last item held out, the
    dropout with the best held-out hitRate@50 kept, then (config.retrain) a fresh model trained on every
    interaction for that model's best epoch count."""
    tried = {}
    for dropout in dropouts:
        trainer = SASRecTrainer(n_items, replace(config, dropout=dropout, retrain=False))
        tried[dropout] = (trainer, trainer.fit(sequences))
    dropout = max(tried, key=lambda d: tried[d][1]["valid_hitrate@50"])
    trainer, report = tried[dropout]
    started = time.time()
    if config.retrain and report["best_epoch"]:
        trainer.refit(sequences, report["best_epoch"])
    return trainer, {
        **report,
        "dropout": dropout,
        "valid_by_dropout": {str(d): r["valid_hitrate@50"] for d, (_, r) in tried.items()},
        "retrained_epochs": report["best_epoch"] if config.retrain else 0,
        "seconds": round(sum(r["seconds"] for _, r in tried.values()) + time.time() - started, 1),
    }


def sasrec_arrays(model: SASRec) -> dict[str, np.ndarray]:
    """The model as plain arrays for recall.sequential.SequentialModel (the API never imports torch)."""
    arrays = {
        "items": model.items.weight.detach().numpy(),  # (N + 1, d), row 0 padding
        "positions": model.positions.weight.detach().numpy(),  # (max_len, d)
        "norm_w": model.norm.weight.detach().numpy(),
        "norm_b": model.norm.bias.detach().numpy(),
    }
    return (
        arrays
        | encoder_layer_arrays(model.encoder.layers)
        | {
            "layers": np.array(model.config.blocks),
            "heads": np.array(model.config.heads),
        }
    )


def train_sequential(
    dataset: Path, out_dir: Path, *, config: SASRecConfig | None = None, dropouts: tuple[float, ...] = DROPOUTS
) -> dict:
    """The served sequential channel's model: SASRec on the dataset's interactions (each user's items in
    time order) by the faithful protocol, written to out_dir/SEQUENTIAL_FILE with the item ids of its rows."""
    data = load_dataset(dataset)
    _, items, _, _, runs = by_user_in_time(data)
    sequences = [items[start:end] for start, end in runs]
    trainer, report = fit_faithful(data.n_items, sequences, config or SASRecConfig(), dropouts)
    arrays = sasrec_arrays(trainer.model) | {"item_ids": np.array([item.id for item in data.items], dtype=str)}
    np.savez(out_dir / SEQUENTIAL_FILE, **arrays)
    return {k: v for k, v in report.items() if k != "epochs"}
