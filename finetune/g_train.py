"""Contrastive finetuning of G with the bias towers, on clicks.

Examples: for every training interaction after a user's first, the items before it (the latest
`history`) predict it. Loss: in-batch sampled softmax over normalize(user) . normalize(item) / tau with
the log-q correction (streaming frequency), plus uniform random negatives (corrected by their own
sampling rate) and one hard negative per row (an item near the positive in the current G space, not in
the user's training items). Rows may be weighted (e.g. by rating). Early stopping on each user's last
training interaction, held out for validation.

The sequence tower trains as SASRec does: one causal pass over a window of a user's items yields a user
after every slot, each predicting the next item, so an epoch costs a transformer pass per window (`seq_run`
rows) instead of one per row.

The user towers read the history as the index serves it: normalize(ECi + EPi) of each history item (EPi
only for items seen in training), the vectors the API gathers from its snapshot, so the tower sees the
same inputs (scale included: the sequence tower adds position and gap embeddings to them) in training,
validation and serving.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrecall.core.atomic import write_atomically
from mmrecall.core.features import TAG_HISTORY, gap_buckets, keys_of
from mmrecall.encoders.content_g import (
    ACTIVE_INTERESTS_FILE,
    HELD_OUT_FILE,
    KNOWN_ITEMS_FILE,
    GConfig,
    TwoTower,
    save_g,
)
from mmrecall.finetune import losses
from mmrecall.finetune.common import EarlyStopping, EtaLogger, Progress, native_bf16
from mmrecall.finetune.frequency import StreamingFrequency

log = logging.getLogger(__name__)


@dataclass
class GTrainConfig:
    epochs: int = 30
    patience: int = 3
    # 1024 rows at lr 2e-3 (with a 256-wide G) cost less per epoch, but stopped early and lower in the train job
    # on MovieLens (held-out hitRate@50 0.256 against 0.316; docs/models.md, "Training speed")
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-5
    random_negatives: int = 256
    hard_negatives: bool = True
    hard_pool: int = 50  # the hard negative is drawn from the positive's nearest `hard_pool` items
    # share of a row's hard negatives drawn from the user's negative feedback. A disliked item is still one
    # the user chose, close to their taste: as the hard negative of half the rows (0.5) it pushed the user
    # away from their next liked item (served personal hitRate@50 1.6 points under none, two seeds); at 0.15
    # the served merged set does no worse than without them (docs/evaluation.md, "Negative feedback")
    disliked_rate: float = 0.15
    log_q: bool = True
    weighted: bool = True  # weight rows by interaction weight (e.g. rating), when present
    seed: int = 0
    # the sequence tower (GConfig.user_tower == "seq")
    mask_loss: float = 0.2  # weight of the masked-item task: hide one history item, find its G vector
    disagreement: float = 0.1  # weight of the penalty on the mean cosine between a user's interests
    min_activation: float = 0.1  # at serving, interests chosen for less than this share of a user's rows drop
    seq_run: int = 5  # seq: next items trained per window pass (the rest of the window is their context)
    balance: float = 0.0  # weight of the load-balancing term on which interest wins (against collapse onto one)
    # dense all-action loss (PinnerFormer): each slot also predicts one item drawn from the user's next
    # `future_window` items, so the user vector keeps the long-term taste that new (cold) items are matched on
    future_loss: float = 0.5  # its weight (0: next item only)
    future_window: int = 50
    bf16: bool | None = None  # bfloat16 autocast for the sequence tower; None: where the CPU has it in hardware


@dataclass
class FitState:
    """What every training step reads: the fit sequences and what was derived from them."""

    seqs: dict[int, np.ndarray]  # user -> training items in time order
    flat: FlatSequences  # the same sequences (and row weights) as one array: a batch is gathered without a loop
    known: torch.Tensor  # (N,) bool: items seen in training (their bias is used)
    frequency: StreamingFrequency  # streaming item frequency for the log-q correction
    hard_pool: torch.Tensor | None  # (N, hard_pool) each item's nearest items in the current G space
    tag_sums: dict[int, np.ndarray]  # seq: user -> (n + 1, T) cumulative tag counts along the sequence
    step: int = 0
    disliked: dict[int, np.ndarray] = field(default_factory=dict)  # user -> items they gave negative feedback


@dataclass
class FlatSequences:
    """Users' training sequences concatenated: user u's items are items[starts[u] : starts[u] + lengths[u]]."""

    items: np.ndarray  # (m,) item index
    weights: np.ndarray | None  # (m,) row weights, aligned with items
    starts: np.ndarray  # (U,) offset of each user's sequence (users without one: length 0)
    lengths: np.ndarray  # (U,)
    pairs: np.ndarray  # sorted distinct user * n_items + item: what each user has (never their hard negative)
    n_items: int

    @classmethod
    def of(cls, seqs: dict[int, np.ndarray], weight_seqs: dict[int, np.ndarray] | None, n_items: int) -> FlatSequences:
        users = np.fromiter(seqs, np.int64, len(seqs))
        n_users = int(users.max()) + 1 if len(users) else 0
        lengths = np.zeros(n_users, np.int64)
        lengths[users] = [len(seqs[u]) for u in users.tolist()]
        starts = np.zeros(n_users, np.int64)
        starts[users] = np.r_[0, np.cumsum(lengths[users])[:-1]] if len(users) else []
        items = (
            np.concatenate([seqs[u] for u in users.tolist()]).astype(np.int64) if len(users) else np.zeros(0, np.int64)
        )
        weights = None
        if weight_seqs is not None:
            weights = np.concatenate([weight_seqs[u] for u in users.tolist()]).astype(np.float32)
        owners = np.repeat(users, lengths[users])
        return cls(items, weights, starts, lengths, np.unique(owners * n_items + items), n_items)

    def at(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(n,) the item at each (user, position)."""
        return self.items[self.starts[users] + positions]

    def weights_at(self, users: np.ndarray, positions: np.ndarray) -> torch.Tensor | None:
        return None if self.weights is None else torch.from_numpy(self.weights[self.starts[users] + positions])

    def before(self, users: np.ndarray, positions: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """history_matrix of each user's items before `positions`: left-padded (n, length) indices and mask."""
        at = positions[:, None] - length + np.arange(length)[None, :]  # (n, L) position in the user's sequence
        mask = at >= 0
        index = np.where(mask, self.items[self.starts[users][:, None] + np.maximum(at, 0)], 0)
        return index, mask

    def has(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n,) bool: whether each user has each item in training."""
        if not len(self.pairs):
            return np.zeros(len(users), bool)
        keys = users * self.n_items + items
        found = np.minimum(np.searchsorted(self.pairs, keys), len(self.pairs) - 1)
        return self.pairs[found] == keys


def disliked_by_user(data: Interactions) -> dict[int, np.ndarray]:
    """user -> the distinct items they gave negative feedback (none: an empty dict)."""
    if data.negative_users is None or data.negative_items is None or not len(data.negative_users):
        return {}
    order = np.argsort(data.negative_users, kind="stable")
    users, items = data.negative_users[order], data.negative_items[order]
    cuts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return {int(users[c]): np.unique(items[c:e]) for c, e in zip(cuts, np.r_[cuts[1:], len(users)], strict=True)}


@dataclass
class Interactions:
    """Training interactions as arrays (time order within each user)."""

    users: np.ndarray  # (m,) int user index
    items: np.ndarray  # (m,) int item index
    weights: np.ndarray | None = None  # (m,) float
    times: np.ndarray | None = None  # (m,) unix seconds (time-gap embeddings of the sequence tower)
    # negative feedback (core.events): (k,) user and (k,) item indices, each the user's hard negative
    negative_users: np.ndarray | None = None
    negative_items: np.ndarray | None = None


def user_sequences(data: Interactions, values: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """user -> its items (or `values`, aligned with the interactions) in time order."""
    order = np.argsort(data.users, kind="stable")  # keeps time order inside each user
    users, items = data.users[order], (data.items if values is None else values)[order]
    cuts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return {int(users[c]): items[c:e] for c, e in zip(cuts, np.r_[cuts[1:], len(users)], strict=True)}


def best_interest_scores(users: torch.Tensor, items: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """(b, d) or (b, K, d) user vectors x (N, d) items -> (b, N): each item scored by its best active interest."""
    if users.dim() == 2:
        return users @ items.T
    scores = torch.einsum("bkd,nd->bkn", users, items)  # (b, K, N)
    if active is not None:
        scores = scores.masked_fill(~active.unsqueeze(-1), float("-inf"))
    return scores.max(dim=1).values


def history_matrix(sequences: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (b, L) item indices and mask of each sequence's latest `length` items."""
    out = np.zeros((len(sequences), length), np.int64)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail
            mask[row, length - len(tail) :] = True
    return out, mask


class GTrainer:
    def __init__(
        self,
        config: GConfig,
        features: np.ndarray,
        item_ids: list[str],
        user_ids: list[str],
        train: GTrainConfig,
        item_tags: np.ndarray | None = None,
    ) -> None:
        self.config, self.train_cfg = config, train
        torch.manual_seed(train.seed)
        self.rng = np.random.default_rng(train.seed)
        self.model = TwoTower(config)
        self.features = torch.from_numpy(np.ascontiguousarray(features, np.float32))  # (N, F)
        self.item_keys = torch.from_numpy(keys_of(item_ids))  # (N,)
        self.user_keys = torch.from_numpy(keys_of(user_ids))  # (U,)
        self.n_items = len(item_ids)
        self.seq = config.user_tower == "seq"
        self.bf16 = native_bf16() if train.bf16 is None else train.bf16
        # (N, T) tag indicator rows over config.tag_vocab: the user's tag preferences are their mean
        self.item_tags = None if item_tags is None else torch.from_numpy(np.ascontiguousarray(item_tags, np.float32))
        # (U, K) how often each interest was the one activated, and which interests serve each user
        self.activations = np.zeros((len(user_ids), config.interests), np.int64)
        self.active: torch.Tensor | None = None
        self.gap_seqs: dict[int, np.ndarray] = {}
        self.known = torch.zeros(self.n_items, dtype=torch.bool)  # items seen in training (set by fit)
        self.g_gflop = 0.0  # G's MLP work in training so far: forward and backward of each step's distinct items

    # ---- data ------------------------------------------------------------------------------------
    def examples(self, sequences: dict[int, np.ndarray]) -> np.ndarray:
        """(user, position) of every interaction after a user's first: its history predicts it."""
        rows = [(u, p) for u, seq in sequences.items() for p in range(1, len(seq))]
        return np.asarray(rows, np.int64).reshape(-1, 2)

    def windows(self, sequences: dict[int, np.ndarray], run: int) -> np.ndarray:
        """Sequence tower: (user, start, end, first) windows. The inputs are seq[start:end] (at most `history`
        items); every input slot j >= first predicts seq[j + 1]. A user's next items are cut into runs of
        `run`, each read with at least history - run items of context before it (all there is near the
        user's start), so every next item is trained once per epoch. Short runs keep a batch's rows spread
        over many users and give each row nearly the context it has at serving; long runs cost less."""
        length = self.config.history
        run = max(1, min(run, length))
        rows = []
        for user, seq in sequences.items():
            for first_target in range(1, len(seq), run):
                end = min(first_target + run, len(seq)) - 1  # the last input predicts the run's last target
                rows.append((user, max(0, end - length), end, first_target - 1))
        return np.asarray(rows, np.int64).reshape(-1, 4)

    # ---- model pieces ----------------------------------------------------------------------------
    def item_matrix(self, known: torch.Tensor | None, *, content_only: bool = False) -> torch.Tensor:
        """normalize(ECi [+ EPi]) for the whole catalogue, (N, dim), eval mode."""
        self.model.eval()
        with torch.no_grad():
            content = torch.cat([self.model.g(self.features[s : s + 8192]) for s in range(0, self.n_items, 8192)])
            if content_only:
                return F.normalize(content, dim=-1)
            return self.model.items(content, self.item_keys, known)

    def user_matrix(
        self,
        histories: list[np.ndarray],
        users: np.ndarray | None,
        times: list[np.ndarray] | None = None,
        *,
        gaps: list[np.ndarray] | None = None,
    ) -> torch.Tensor:
        """(b, dim), or (b, K, dim) interests for the sequence tower. `times`: unix seconds of the histories
        (or their `gaps` buckets); without either the tower reads every gap as unknown."""
        self.model.eval()
        with torch.no_grad():
            index, mask = history_matrix(histories, self.config.history)
            flat = torch.from_numpy(index).reshape(-1)
            served = self.model.items(self.model.g(self.features[flat]), self.item_keys[flat], self.known[flat])
            content = served.reshape(*index.shape, -1)  # (b, L, dim): the vectors the index serves
            keys = self.user_keys[torch.from_numpy(users)] if users is not None else None
            if gaps is None and times is not None:
                gaps = [gap_buckets(t) for t in times]
            extra = self._sequence_inputs(index, mask, gaps, histories)
            return self.model.users(content, torch.from_numpy(mask), keys, **extra)

    def active_interests(self, users: np.ndarray | None, n: int) -> torch.Tensor | None:
        """(n, K) interests that serve these users (all of them for users without an activation record)."""
        if not self.seq or self.active is None:
            return None
        if users is None:
            return torch.ones(n, self.config.interests, dtype=torch.bool)
        return self.active[torch.from_numpy(np.asarray(users, np.int64))]

    def _sequence_inputs(
        self, index: np.ndarray, mask: np.ndarray, gaps: list[np.ndarray] | None, histories: list[np.ndarray]
    ) -> dict:
        """The sequence tower's extra inputs: time-gap buckets (b, L) of the window, and tag preferences (b, T)
        over the longer history (TAG_HISTORY items): the transformer reads the recent items, the tags the
        long-term taste."""
        if not self.seq:
            return {}
        extra: dict = {"gaps": None, "tag_pref": None}
        if gaps is not None:
            extra["gaps"] = torch.from_numpy(history_matrix(gaps, self.config.history)[0])
        if self.item_tags is not None:
            index_long, mask_long = history_matrix(histories, TAG_HISTORY)
            tags = self.item_tags[torch.from_numpy(index_long)] * torch.from_numpy(mask_long).unsqueeze(-1)
            extra["tag_pref"] = tags.sum(1) / torch.from_numpy(mask_long).sum(1, keepdim=True).clamp(min=1)  # (b, T)
        return extra

    # ---- training --------------------------------------------------------------------------------
    def fit(self, data: Interactions, on_progress: Progress | None = None, resume: Path | None = None) -> dict:
        """resume: a file the state after each epoch is written to (atomically) and, when it exists, read
        from first: a training whose process was killed goes on from its last whole epoch, with the same
        random streams, instead of from the start."""
        cfg = self.train_cfg
        sequences = user_sequences(data)
        if self.seq and data.times is not None:
            self.gap_seqs = {u: gap_buckets(t) for u, t in user_sequences(data, data.times).items()}
        weight_seqs = None
        if cfg.weighted and data.weights is not None:
            order = np.argsort(data.users, kind="stable")
            w = data.weights[order] / max(float(np.mean(data.weights)), 1e-9)
            cuts = np.flatnonzero(np.r_[True, data.users[order][1:] != data.users[order][:-1]])
            weight_seqs = {
                int(data.users[order][c]): w[c:e] for c, e in zip(cuts, np.r_[cuts[1:], len(w)], strict=True)
            }
        # hold out each user's last training interaction for early stopping
        valid_users = np.array([u for u, s in sequences.items() if len(s) >= 3], np.int64)
        valid_targets = np.array([sequences[u][-1] for u in valid_users], np.int64)
        fit_seqs = {u: (s[:-1] if u in set(valid_users.tolist()) else s) for u, s in sequences.items()}
        known = torch.zeros(self.n_items, dtype=torch.bool)
        known[torch.from_numpy(np.concatenate(list(fit_seqs.values())))] = True
        self.known = known  # validation reads histories as they will be served
        # the sequence tower steps over windows of `seq_run` rows each, the pooling tower over rows
        units = self.windows(fit_seqs, cfg.seq_run) if self.seq else self.examples(fit_seqs)
        per_step = max(1, cfg.batch_size // cfg.seq_run) if self.seq else cfg.batch_size  # about batch_size rows
        steps_per_epoch = max(1, int(np.ceil(len(units) / per_step)))
        state = FitState(
            seqs=fit_seqs,
            known=known,
            hard_pool=None,
            flat=FlatSequences.of(fit_seqs, weight_seqs, self.n_items),
            frequency=StreamingFrequency(initial_gap=float(steps_per_epoch)),
            tag_sums=self._tag_sums(fit_seqs) if self.seq else {},
            disliked=disliked_by_user(data),
        )
        # fused: one kernel over all parameters (the id tables are most of them) instead of a dozen ops per tensor
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        eta = EtaLogger("finetune-g", cfg.epochs * steps_per_epoch, on_progress)
        best = EarlyStopping(cfg.patience)
        history, started, first = [], time.time(), 1
        if resume is not None and resume.is_file():
            first = self._load_epoch_state(resume, optimizer, best, state, history) + 1
            eta.resumed_at(state.step)
            log.info("G resumes after epoch %d from %s", first - 1, resume)
        for epoch in range(first, cfg.epochs + 1):
            state.hard_pool = self._hard_pool(known) if cfg.hard_negatives else None
            self.model.train()
            order = self.rng.permutation(len(units))
            losses = []
            for start in range(0, len(order), per_step):
                batch = units[order[start : start + per_step]]
                loss = self._seq_loss(batch, state) if self.seq else self._rows_loss(batch, state)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                state.step += 1
                losses.append(loss.item())
                eta(state.step, {"epoch": epoch, "loss": float(np.mean(losses[-20:]))})
            hit = self.validate(fit_seqs, valid_users, valid_targets, known)
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "valid_hitrate@50": hit})
            log.info("G epoch %d: loss %.4f, valid hitrate@50 %.4f", epoch, np.mean(losses), hit)
            if not best.update(epoch, hit, self.model, activations=self.activations.copy()) and best.stop(epoch):
                break
            self.activations[:] = 0  # one epoch's record: the interests as they were at that epoch
            if resume is not None:
                self._save_epoch_state(resume, epoch, optimizer, best, state, history)
        best.restore(self.model)
        self.model.eval()
        self.known = known
        if self.seq:
            self.activations = best.extra["activations"]
            self.active = torch.from_numpy(activity(self.activations, cfg.min_activation))
        # what early stopping held out: (user, history, target), for tuning what sits on top of G
        self.held_out = [(int(u), fit_seqs[int(u)], int(t)) for u, t in zip(valid_users, valid_targets, strict=True)]
        self.held_out_times = user_sequences(data, data.times) if data.times is not None else None
        report = {
            "best_epoch": best.epoch,
            "valid_hitrate@50": best.score,
            "epochs": history,
            "seconds": round(time.time() - started, 1),
            "resumed_after_epoch": first - 1,
            "examples": int(sum(len(q) - 1 for q in fit_seqs.values() if len(q))),
            "g_gflop": round(self.g_gflop, 1),
        }
        if self.seq:  # elastic K: how many interests serve a user who has an activation record
            recorded = self.activations.sum(axis=1) > 0
            report["active_interests_mean"] = float(self.active.numpy()[recorded].sum(axis=1).mean())
        return report

    def _save_epoch_state(
        self, path: Path, epoch: int, optimizer: torch.optim.Optimizer, best: EarlyStopping, state: FitState, history
    ) -> None:
        """Everything the next epoch reads: weights, optimizer moments, the best epoch so far, the random
        streams, the log-q estimate; written beside and renamed, so a kill mid-write leaves the last one."""
        state_now = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best": (best.score, best.epoch, best.state, best.extra),
            "history": history,
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": state.step,
            "frequency": (state.frequency.last_seen, state.frequency.gap),
            "activations": self.activations,
            "g_gflop": self.g_gflop,
        }
        write_atomically(path, lambda partial: torch.save(state_now, partial))

    def _load_epoch_state(
        self, path: Path, optimizer: torch.optim.Optimizer, best: EarlyStopping, state: FitState, history
    ) -> int:
        """The state `_save_epoch_state` wrote, into this trainer; the epoch it was written after."""
        saved = torch.load(path, weights_only=False)
        self.model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        best.score, best.epoch, best.state, best.extra = saved["best"]
        history.extend(saved["history"])
        self.rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        state.step = saved["step"]
        state.frequency.last_seen, state.frequency.gap = saved["frequency"]
        self.activations = saved["activations"]
        self.g_gflop = saved["g_gflop"]
        return int(saved["epoch"])

    def _hard_pool(self, known: torch.Tensor) -> torch.Tensor:
        """(N, hard_pool) nearest items of every item in the current G space (itself excluded)."""
        items = self.item_matrix(known, content_only=True)
        pools = []
        for start in range(0, self.n_items, 2048):
            sims = items[start : start + 2048] @ items.T  # (c, N)
            sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = -2.0
            pools.append(torch.topk(sims, min(self.train_cfg.hard_pool, self.n_items - 1), dim=1).indices)
        return torch.cat(pools)

    def _tag_sums(self, sequences: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """user -> (n + 1, T) cumulative tag counts, so the tag preferences after any slot are one subtraction."""
        if self.item_tags is None:
            return {}
        tags = self.item_tags.numpy()
        return {
            u: np.vstack([np.zeros((1, tags.shape[1]), np.float32), np.cumsum(tags[q], axis=0)])
            for u, q in sequences.items()
        }

    @staticmethod
    def _tag_prefs_every_slot(
        users: np.ndarray, slot_pos: np.ndarray, mask: np.ndarray, state: FitState
    ) -> torch.Tensor:
        """(b, L, T) the tag preferences as they stood after each slot (the mean over its latest TAG_HISTORY
        items), for windows whose slots sit at `slot_pos` (b, L) in their users' sequences."""
        sums = [state.tag_sums[u] for u in users]
        reach = np.clip(slot_pos + 1, 0, None)  # items up to and including the slot
        upper = np.stack([sums[r][np.minimum(reach[r], len(sums[r]) - 1)] for r in range(len(users))])
        lower = np.stack([sums[r][np.maximum(reach[r] - TAG_HISTORY, 0)] for r in range(len(users))])
        counts = np.clip(np.minimum(reach, TAG_HISTORY), 1, None)[..., None]
        return torch.from_numpy(((upper - lower) / counts * mask[..., None]).astype(np.float32))

    def _rows_loss(self, batch: np.ndarray, state: FitState) -> torch.Tensor:
        """Pooling tower: each (user, position) row's history predicts its item."""
        users, positions = batch[:, 0], batch[:, 1]
        targets = state.flat.at(users, positions)
        index, mask = state.flat.before(users, positions, self.config.history)
        weights = state.flat.weights_at(users, positions)
        negatives = self._negatives(users, targets, state)
        served, position = self._served(index[mask], targets, negatives, state.known)
        history = self._history_vectors(index, mask, served, position)  # (b, L, dim)
        user_vec = self.model.users(history, torch.from_numpy(mask), self.user_keys[torch.from_numpy(users)])
        target_vec = self._item_vectors(targets, served, position)
        return self._softmax_loss(user_vec, target_vec, users, targets, negatives, served, position, weights, state)

    def _seq_loss(self, batch: np.ndarray, state: FitState) -> torch.Tensor:
        """Sequence tower: one causal pass per (user, start, end, first) window; the user after every slot
        from `first` on predicts the next item. Single activation: each row trains the interest that best
        matches its target; plus the disagreement, load-balancing and masked-item terms."""
        cfg, model, length = self.train_cfg, self.model, self.config.history
        inputs = [state.seqs[u][a:e] for u, a, e, _ in batch]
        index, mask = history_matrix(inputs, length)
        pad = length - (batch[:, 2] - batch[:, 1])  # (b,) left padding of each window
        slot_pos = batch[:, 1:2] - pad[:, None] + np.arange(length)[None, :]  # (b, L) position in the user's seq
        predicts = mask & (slot_pos >= batch[:, 3:4])  # (b, L) slots whose next item is a training row
        rows_b, rows_l = np.nonzero(predicts)
        users, next_pos = batch[rows_b, 0], slot_pos[rows_b, rows_l] + 1  # (R,) each row's user and target slot
        targets = state.flat.at(users, next_pos)
        weights = state.flat.weights_at(users, next_pos)
        gaps = None
        if self.gap_seqs:
            gaps = torch.from_numpy(history_matrix([self.gap_seqs[u][a:e] for u, a, e, _ in batch], length)[0])
        tag_prefs = self._tag_prefs_every_slot(batch[:, 0], slot_pos, mask, state) if state.tag_sums else None
        negatives = self._negatives(users, targets, state)
        later = self._later_items(users, next_pos, state) if cfg.future_loss > 0 else None
        needed = targets if later is None else np.concatenate([targets, later])
        served, position = self._served(index[mask], needed, negatives, state.known)
        history = self._history_vectors(index, mask, served, position)  # (b, L, dim)
        masked = self._mask_one_slot(mask) if cfg.mask_loss > 0 else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):  # the transformer is the cost here
            interests, states = model.seq_users(
                history,
                torch.from_numpy(mask),
                self.user_keys[torch.from_numpy(batch[:, 0])],
                gaps=gaps,
                tag_prefs=tag_prefs,
                masked=masked,
            )
        interests = interests.float()[torch.from_numpy(rows_b), torch.from_numpy(rows_l)]  # (R, K, dim)
        states = states.float()
        target_vec = self._item_vectors(targets, served, position)
        match, choice = losses.best_interest(interests, target_vec)  # (R, K), (R,)
        np.add.at(self.activations, (users, choice.numpy()), 1)
        aux = torch.zeros(())
        k = interests.shape[1]
        if k > 1 and cfg.disagreement > 0:
            aux = aux + cfg.disagreement * losses.disagreement(interests)
        if k > 1 and cfg.balance > 0:
            aux = aux + cfg.balance * losses.balance(match, self.config.temperature)
        if masked is not None and masked.any():
            items = index[masked.numpy()]  # (m,) the hidden items, contrasted against the batch's
            aux = aux + cfg.mask_loss * losses.masked_item_loss(
                model.user_tower.reconstruct(states[masked]),  # (m, dim)
                history[masked],  # (m, dim): their vectors as the tower reads them
                torch.from_numpy(items),
                self.config.temperature,
            )
        user_vec = interests[torch.arange(len(targets)), choice]  # (R, dim)
        loss = self._softmax_loss(user_vec, target_vec, users, targets, negatives, served, position, weights, state)
        # each row's best interest for its later item (single activation again); the row keeps its weight,
        # negatives and hard negative (not the user's, so never the later item either)
        if later is not None:
            later_vec = self._item_vectors(later, served, position)
            aux = aux + cfg.future_loss * losses.dense_all_action(
                interests,
                later_vec,
                lambda user, target: self._softmax_loss(
                    user, target, users, later, negatives, served, position, weights, state, count=False
                ),
            )
        return loss + aux

    def _later_items(self, users: np.ndarray, next_pos: np.ndarray, state: FitState) -> np.ndarray:
        """(R,) one item per row drawn uniformly from its user's next `future_window` items (the next included)."""
        # >= 1: the next item is always there
        reach = np.minimum(state.flat.lengths[users] - next_pos, self.train_cfg.future_window)
        picks = next_pos + (self.rng.random(len(users)) * reach).astype(np.int64)
        return state.flat.at(users, picks)

    def _negatives(self, users: np.ndarray, targets: np.ndarray, state: FitState) -> tuple[np.ndarray, np.ndarray]:
        """Uniform random negatives (M,) shared by the batch, and one hard negative per row (-1: none): an
        item near the row's positive in the current G space that the user has not clicked."""
        randoms = self.rng.integers(self.n_items, size=self.train_cfg.random_negatives)
        hard = np.full(len(targets), -1, np.int64)
        if state.hard_pool is not None:
            pool = state.hard_pool
            picks = pool[torch.from_numpy(targets), self.rng.integers(pool.shape[1], size=len(targets))].numpy()
            hard = np.where(state.flat.has(users, picks), -1, picks)
        if state.disliked:
            # an item the user disliked is the hardest negative there is: it takes the row's hard slot this often
            rate = self.train_cfg.disliked_rate
            for row, user in enumerate(users.tolist()):
                disliked = state.disliked.get(user)
                if disliked is not None and self.rng.random() < rate:
                    hard[row] = disliked[self.rng.integers(len(disliked))]
        return randoms, hard

    def _served(
        self,
        history_items: np.ndarray,
        targets: np.ndarray,
        negatives: tuple[np.ndarray, np.ndarray],
        known: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """G and the item bias only where the step needs them, once per distinct item: (u, dim) the served
        vectors normalize(ECi + EPi) of the step's distinct items, and (N,) each item's row in it (-1: absent).
        A large batch reads most of the catalogue, so its cost per row falls as the batch grows."""
        randoms, hard = negatives
        needed = torch.from_numpy(np.unique(np.concatenate([history_items, targets, randoms, hard[hard >= 0]])))
        position = torch.full((self.n_items,), -1, dtype=torch.long)
        position[needed] = torch.arange(len(needed))
        self.g_gflop += 6 * len(needed) * self.model.g.macs / 1e9  # forward 2 FLOPs per MAC, backward 4
        return self.model.items(self.model.g(self.features[needed]), self.item_keys[needed], known[needed]), position

    def _history_vectors(
        self, index: np.ndarray, mask: np.ndarray, served: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        """(b, L, dim) the served vectors of the history slots, zeros at padding (gathered from a zero row)."""
        padded = torch.cat([served, served.new_zeros(1, served.shape[1])])  # (u + 1, dim)
        rows = torch.where(torch.from_numpy(mask), position[torch.from_numpy(index)], len(served))  # (b, L)
        return padded.index_select(0, rows.reshape(-1)).reshape(*index.shape, -1)

    @staticmethod
    def _item_vectors(idx: np.ndarray, served: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """(n, dim) rows of the step's served vectors for item indices `idx` (each must be among the needed)."""
        return served.index_select(0, position[torch.from_numpy(idx)])

    def _softmax_loss(
        self,
        user_vec: torch.Tensor,
        target_vec: torch.Tensor,
        users: np.ndarray,
        targets: np.ndarray,
        negatives: tuple[np.ndarray, np.ndarray],
        served: torch.Tensor,
        position: torch.Tensor,
        weights: torch.Tensor | None,
        state: FitState,
        *,
        count: bool = True,
    ) -> torch.Tensor:
        """Sampled softmax of each row's positive against the batch's other positives (log-q corrected),
        the random negatives (corrected by their sampling rate) and the row's hard negative (that of the
        row's next item). `count`: these positives update the item frequency (once per step)."""
        cfg, tau = self.train_cfg, self.config.temperature
        randoms, hard = negatives
        target_keys = self.item_keys[torch.from_numpy(targets)]
        log_q = None
        if cfg.log_q:
            if count:
                state.frequency.update(target_keys, state.step + 1)
            log_q = state.frequency.log_q(target_keys)  # (b,)
        # another row's copy of my positive is no negative, nor is another row's positive of my own user (the
        # sequence tower's rows come in runs of one user's next items)
        same = (targets[:, None] == targets[None, :]) | (users[:, None] == users[None, :])
        excluded = torch.from_numpy(same & ~np.eye(len(targets), dtype=bool))  # (b, b)
        columns = [losses.in_batch_logits(user_vec, target_vec, tau, log_q=log_q, excluded=excluded)]
        if cfg.random_negatives:
            columns.append(
                losses.random_negative_logits(
                    user_vec,
                    self._item_vectors(randoms, served, position),  # (M, dim)
                    tau,
                    log_rate=float(np.log(cfg.random_negatives / self.n_items)) if cfg.log_q else None,
                    collide=torch.from_numpy(randoms[None, :] == targets[:, None]),  # (b, M)
                )
            )
        if (hard >= 0).any():
            hard_vec = self._item_vectors(np.where(hard >= 0, hard, targets), served, position)
            columns.append(losses.hard_negative_logit(user_vec, hard_vec, tau, torch.from_numpy(hard < 0)))
        return losses.sampled_softmax(columns, weights)

    def _mask_one_slot(self, mask: np.ndarray) -> torch.Tensor:
        """(b, L) True at one random real slot of every row with at least two history items."""
        counts = mask.sum(axis=1)
        length = mask.shape[1]
        slot = length - counts + self.rng.integers(0, np.maximum(counts, 1))  # a slot among the real ones
        masked = np.zeros_like(mask)
        rows = np.flatnonzero(counts >= 2)
        masked[rows, slot[rows]] = True
        return torch.from_numpy(masked)

    def validate(self, seqs, users: np.ndarray, targets: np.ndarray, known: torch.Tensor, k: int = 50) -> float:
        items = self.item_matrix(known)
        gaps = [self.gap_seqs[u][: len(seqs[u])] for u in users] if self.gap_seqs else None
        user_vec = self.user_matrix([seqs[u] for u in users], users, gaps=gaps)
        scores = best_interest_scores(user_vec, items)  # (v, N)
        for row, u in enumerate(users):
            scores[row, torch.from_numpy(seqs[u])] = float("-inf")
        target_scores = scores[torch.arange(len(users)), torch.from_numpy(targets)]
        ranks = (scores >= target_scores[:, None]).sum(dim=1) - 1
        return float((ranks < k).float().mean())

    def save(
        self, directory: Path, report: dict, item_ids: list[str] | None = None, user_ids: list[str] | None = None
    ) -> Path:
        """The checkpoint; with `item_ids`, also the ids of the items seen in training (their bias is served);
        with `user_ids` and the sequence tower, each user's active interests (the elastic K)."""
        out = save_g(self.model, directory, report)
        if item_ids is not None:
            known = [item_ids[i] for i in np.flatnonzero(self.known.numpy())]
            (out / KNOWN_ITEMS_FILE).write_text(json.dumps(known))
        if item_ids is not None and user_ids is not None and getattr(self, "held_out", None):
            (out / HELD_OUT_FILE).write_text(json.dumps(self.held_out_ids(item_ids, user_ids)))
        if user_ids is not None and self.active is not None:
            recorded = np.flatnonzero(self.activations.sum(axis=1) > 0)
            np.savez(
                out / ACTIVE_INTERESTS_FILE,
                users=np.array([user_ids[u] for u in recorded], dtype=str),
                mask=self.active.numpy()[recorded],
            )
        return out

    def held_out_ids(self, item_ids: list[str], user_ids: list[str]) -> list[dict]:
        """The held-out queries by id: each user's history (oldest first, with unix seconds when known) and
        the item it held out."""
        times = self.held_out_times
        return [
            {
                "user": user_ids[u],
                "history": [item_ids[i] for i in history.tolist()],
                "times": times[u][: len(history)].tolist() if times is not None else None,
                "target": item_ids[target],
            }
            for u, history, target in self.held_out
        ]


def activity(activations: np.ndarray, min_share: float) -> np.ndarray:
    """(U, K) counts of activated interests -> (U, K) bool: the interests kept at serving. A user's
    interest serves when it won at least `min_share` of their rows; a user without a record keeps all."""
    totals = activations.sum(axis=1, keepdims=True)
    keep = activations >= min_share * np.maximum(totals, 1)
    keep[totals[:, 0] == 0] = True
    keep[np.arange(len(keep)), activations.argmax(axis=1)] = True  # never none
    return keep


def make_config(features: np.ndarray, specs: tuple[str, ...], **overrides) -> GConfig:
    return replace(GConfig(feature_encoders=specs, feature_dim=int(features.shape[1])), **overrides)
