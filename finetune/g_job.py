"""`mmrecall finetune g`: train G on a dataset's whole behaviour and write a loadable checkpoint.

Feature vectors come from the named encoders (cached); each user's last interaction is held out for
early stopping; the checkpoint directory is an encoder ("g") that activation can backfill the catalogue with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mmrecall.core.dataset import by_user_in_time, load_dataset, tag_matrix
from mmrecall.core.events import EventRule
from mmrecall.encoders.dataset import encode_dataset
from mmrecall.finetune.common import Progress, run_dir
from mmrecall.finetune.g_train import GTrainConfig, GTrainer, Interactions, make_config

DEFAULT_FEATURES = ("text-minilm", "dual-stream-base")


def train_g(
    dataset: Path,
    *,
    features: tuple[str, ...] = DEFAULT_FEATURES,
    out_root: Path,
    cache: Path | None = None,
    train: GTrainConfig | None = None,
    progress: bool = True,
    on_progress: Progress | None = None,
    events: Mapping[str, EventRule] | None = None,
    resume: Path | None = None,
    **model_overrides,
) -> dict:
    """events: what each interaction event is (core.events; default: its defaults): negative feedback
    becomes the users' hard negatives. resume: the file the trainer keeps its state in after each epoch
    (GTrainer.fit), so that a training run again with the same file goes on where it was killed."""
    data = load_dataset(dataset, events)
    if not len(data.users):
        raise ValueError(f"{dataset}: no interactions to learn from")
    matrix = np.concatenate([encode_dataset(data, spec, cache=cache, progress=progress) for spec in features], axis=1)
    users, items, times, weights, _ = by_user_in_time(data)
    item_tags = None
    if model_overrides.get("user_tower") == "seq":  # cate-aware attention reads the items' level-1 tags
        vocab, item_tags = tag_matrix(data)
        model_overrides["tag_vocab"] = vocab
    config = make_config(matrix, tuple(features), **model_overrides)
    trainer = GTrainer(
        config, matrix, [i.id for i in data.items], data.user_ids, train or GTrainConfig(), item_tags=item_tags
    )
    interactions = Interactions(users, items, weights, times, data.negative_users, data.negative_items)
    report = trainer.fit(interactions, on_progress=on_progress, resume=resume)
    out = trainer.save(
        run_dir(out_root, "g"),
        {**report, "dataset": str(dataset), "features": list(features)},
        item_ids=[i.id for i in data.items],
        user_ids=data.user_ids,
    )
    return {"checkpoint": str(out), **{k: v for k, v in report.items() if k != "epochs"}}
