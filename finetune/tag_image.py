"""Tag-finetuned image model: a backbone, two FC layers, multi-label tag classification at a chosen
level; the first FC layer's output is the image vector.

The backbone stays frozen by default (its pooled features are computed once and cached), which makes
training a matter of seconds on a CPU; the report gives validation tag mAP against the tag-frequency prior.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmrecall.core.dataset import load_dataset
from mmrecall.core.interchange import tag_at_level
from mmrecall.encoders import create_encoder, load_config
from mmrecall.encoders.config import TagHeadConfig
from mmrecall.encoders.image_encoders import ImageEncoder
from mmrecall.finetune.common import EarlyStopping, EtaLogger, Progress, frame_features, run_dir

log = logging.getLogger(__name__)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one label column; ties broken against the positives (pessimistic)."""
    order = np.lexsort((labels, -scores))  # among equal scores, negatives first
    hits = labels[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def mean_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    values = [average_precision(scores[:, j], labels[:, j]) for j in range(labels.shape[1]) if labels[:, j].any()]
    return float(np.mean(values)) if values else float("nan")


def tag_vocabulary(tag_sets: list[set[str]], min_count: int) -> list[str]:
    counts: dict[str, int] = {}
    for tags in tag_sets:
        for tag in tags:
            counts[tag] = counts.get(tag, 0) + 1
    return sorted(tag for tag, n in counts.items() if n >= min_count)


def train_tag_image(
    dataset: Path,
    *,
    base: str = "tag-image-effnet",
    tag_level: int = 2,
    out_root: Path,
    cache: Path | None = None,
    epochs: int = 200,
    patience: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    min_count: int = 10,
    valid_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    on_progress: Progress | None = None,
) -> dict:
    data = load_dataset(dataset)
    config = load_config(base)
    if config.kind != "tag-image":
        raise ValueError(f"{base!r} is a {config.kind!r} encoder; tag finetuning needs a tag-image variant")
    encoder = create_encoder(base)
    assert isinstance(encoder, ImageEncoder)
    with_cover = [item for item in data.items if item.cover or item.frames or item.video]
    cache_file = cache / f"cover-features-{data.fingerprint}-{config.image.backbone}.npz" if cache else None
    features, offsets = frame_features(
        with_cover, encoder.image.to_tensor, encoder.image.features, n_frames=1, cache=cache_file, progress=progress
    )
    has_frame = offsets[1:] > offsets[:-1]
    items = [item for item, ok in zip(with_cover, has_frame, strict=True) if ok]
    x = features[offsets[:-1][has_frame]]  # (m, F): the cover's features
    tag_sets = [{tag_at_level(t, tag_level) for t in item.tags} for item in items]
    vocab = tag_vocabulary(tag_sets, min_count)
    if not vocab:
        raise ValueError(f"no tag at level {tag_level} is carried by {min_count}+ items with a cover")
    column = {tag: j for j, tag in enumerate(vocab)}
    y = np.zeros((len(items), len(vocab)), np.float32)
    for i, tags in enumerate(tag_sets):
        for tag in tags & set(column):
            y[i, column[tag]] = 1.0
    keep = y.any(axis=1)
    x, y = x[keep], y[keep]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_valid = max(1, int(valid_fraction * len(x)))
    valid, train = order[:n_valid], order[n_valid:]
    log.info(
        "tag-image: %d items with covers and tags, %d tags at level %d, %d train / %d valid",
        len(x),
        len(vocab),
        tag_level,
        len(train),
        len(valid),
    )

    head_config = replace(config.tag_head or TagHeadConfig(), tags=tuple(vocab), tag_level=tag_level)
    torch.manual_seed(seed)
    head = encoder.head.__class__(x.shape[1], head_config)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    prior = np.broadcast_to(y[train].mean(axis=0), y[valid].shape)
    prior_map = mean_ap(prior, y[valid])
    best = EarlyStopping(patience)
    eta = EtaLogger("tag-image", epochs, on_progress, every_s=5.0)
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.from_numpy(rng.permutation(train))
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            _, logits = head(xt[idx])  # (b, n_tags)
            loss = loss_fn(logits, yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            valid_map = mean_ap(head(xt[valid])[1].numpy(), y[valid])
        best.update(epoch, valid_map, head)
        eta(epoch, {"loss": loss.item(), "valid_map": valid_map, "best": best.score})
        if best.stop(epoch):
            break
    best.restore(head)

    trained = ImageEncoder(replace(config, tag_head=head_config))
    trained.head.load_state_dict(head.state_dict())
    out = trained.save(run_dir(out_root, "tag-image"))
    report = {
        "checkpoint": str(out),
        "base": base,
        "backbone": config.image.backbone,
        "tag_level": tag_level,
        "tags": len(vocab),
        "train_items": int(len(train)),
        "valid_items": int(len(valid)),
        "valid_map": best.score,
        "prior_map": prior_map,
        "best_epoch": best.epoch,
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    return report
