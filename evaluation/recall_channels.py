"""mmrecall's served channels in the harness: each row is what the API answers for the split.

`RecallSetChannel` builds the split's serving state once per G tower (evaluation.served: ingest, the
workers' encode function, the train job, reindex, swap) and asks it, per query user, exactly what
POST /v1/recall {"user_id", "k", "channels"} asks: one channel alone, or all of them merged. Under the
cold protocol the request adds `new_only` (items without behaviour), the cold items. Each answer becomes
dense scores: listed items by rank, everything else -inf (not recalled).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mmrecall.core.dataset import Split
from mmrecall.evaluation.channels import SEQ, Channel, EvalContext
from mmrecall.evaluation.metrics import KS
from mmrecall.evaluation.served import ServedSplit, build_served, dense_scores
from mmrecall.recall.channels import CHANNELS

# the train job's parameters per serving state: G's pooling or sequence tower; the pooling tower with the
# sequential channel's SASRec beside it (`mmrecall train --sequential`)
TOWERS = {"pool": {}, "seq": SEQ, "pool+sequential": {"sequential": True}}


def served_split(ctx: EvalContext, split: Split, tower: str) -> ServedSplit:
    """The split's serving state with this user tower, built once and shared by its rows."""
    key = ("served", id(split), tower)
    if key not in ctx.models:
        if ctx.workdir is None:
            ctx.workdir = Path(tempfile.mkdtemp(prefix="mmrecall-eval-"))
        home = ctx.workdir / f"{split.protocol}-{split.split}-{tower}"
        train = {**ctx.g_train, **TOWERS[tower]}
        if train.get("sequential") and ctx.sasrec_train:
            train["sequential_params"] = dict(ctx.sasrec_train)  # e.g. a --quick run's epochs
        if ctx.g_features:
            train["features"] = list(ctx.g_features)
        served = build_served(ctx.data, split, home, encoder=ctx.encoder, train=train, progress=ctx.progress)
        ctx.models[key] = served
        ctx.models[((id(split), tower), "report")] = {
            k: served.report[k] for k in ("ingest_s", "train_s", "interactions") if k in served.report
        } | {"train": served.report.get("train")}
    return ctx.models[key]


class RecallSetChannel(Channel):
    """One served channel alone, or `merged` (the API's default request), over the split's serving state."""

    uses_times = True

    def __init__(self, name: str, tower: str = "pool", report_name: str | None = None) -> None:
        super().__init__()
        self.variant = tower  # the harness reports the training under this key
        self.kind, self.name = name, report_name or name  # kind: a served channel or "merged"

    def fit(self, ctx: EvalContext, split: Split) -> None:
        self.served = served_split(ctx, split, self.variant)
        self.user_ids, self.item_index, self.n_items = ctx.data.user_ids, ctx.data.item_index, ctx.data.n_items
        self.new_only = split.protocol == "cold"  # the cold items are exactly those without behaviour
        if self.kind == "merged":
            self.tuned = self.served.report.get("recall") or {}

    def scores(self, users, histories, times=None):
        channels = CHANNELS if self.kind == "merged" else (self.kind,)
        out = np.empty((len(users), self.n_items), np.float32)
        for row, user in enumerate(np.asarray(users).tolist()):
            answer = self.served.answer(self.user_ids[user], k=max(KS), channels=channels, new_only=self.new_only)
            out[row] = dense_scores(answer, self.item_index, self.n_items)
        return out
