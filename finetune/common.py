"""Pieces every training job shares: run directories, progress with ETA, early stopping, frozen frame features."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmrecall.core.interchange import ItemRecord
from mmrecall.encoders.media import MediaError, load_content

log = logging.getLogger(__name__)
Progress = Callable[[int, int, dict], None]  # (done, total, metrics)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). Elsewhere (e.g. AVX2 only)
    bfloat16 autocast is emulated and several times slower than float32, so training stays in float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class EarlyStopping:
    """The best held-out score so far, the epoch it came at and the model's weights then (plus any `extra`
    state the caller keeps with them); `stop` once `patience` epochs have passed without a better one."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.score, self.epoch = -1.0, 0
        self.state: dict[str, torch.Tensor] | None = None
        self.extra: dict = {}

    def update(self, epoch: int, score: float, model: torch.nn.Module, **extra) -> bool:
        """Record an evaluation; True when it is the best so far (its weights are copied)."""
        if score <= self.score:
            return False
        self.score, self.epoch, self.extra = score, epoch, extra
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        return True

    def stop(self, epoch: int) -> bool:
        return epoch - self.epoch >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """The best weights back into the model (none recorded: left as it is)."""
        if self.state is not None:
            model.load_state_dict(self.state)


def run_dir(root: Path, kind: str) -> Path:
    """A new directory per run, named by its start time (a suffix when two runs start in one second)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for attempt in range(1000):
        path = root / kind / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {root / kind}")


def item_frames_or_none(item: ItemRecord, n_frames: int):
    """Decoded frames of an item (cover first), or [] when it has none or they cannot be decoded."""
    try:
        return load_content(item.title, item.tags, item.cover, item.frames, item.video, n_frames=n_frames).all_frames()
    except MediaError as exc:
        log.debug("item %s: media skipped: %s", item.id, exc)
        return []


@torch.inference_mode()
def frame_features(
    items: Sequence[ItemRecord],
    to_tensor: Callable,
    features: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_frames: int,
    cache: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame features of a frozen image model for every item, ragged.

    Returns (features float32 (total_frames, F), offsets int64 (n_items + 1,)): item i owns rows
    offsets[i]:offsets[i+1]. Cached at `cache` (an .npz path) when given.
    """
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        return stored["features"], stored["offsets"]
    chunks, counts, pending = [], [], []

    def flush() -> None:
        if pending:
            chunks.append(features(to_tensor(pending)).float().numpy())
            pending.clear()

    for item in tqdm(items, desc="frame features", unit="item", disable=not progress):
        frames = item_frames_or_none(item, n_frames)
        counts.append(len(frames))
        pending.extend(frames)
        if len(pending) >= batch_size:
            flush()
    flush()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=matrix, offsets=offsets)
    return matrix, offsets


class EtaLogger:
    """Logs `done/total`, rate and ETA at most every `every_s` seconds (and reports to a callback)."""

    def __init__(self, name: str, total: int, on_progress: Progress | None = None, every_s: float = 10.0) -> None:
        self.name, self.total, self.on_progress, self.every_s = name, total, on_progress, every_s
        self.started = self.last = time.time()
        self.done_before = 0  # done by an earlier run this one resumes: not part of this run's rate

    def resumed_at(self, done: int) -> None:
        self.done_before, self.started = done, time.time()

    def __call__(self, done: int, metrics: dict) -> None:
        now = time.time()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        rate = (done - self.done_before) / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        log.info("%s %d/%d (%.2f/s, ETA %.0fs) %s", self.name, done, self.total, rate, eta, shown)
        if self.on_progress:
            self.on_progress(done, self.total, metrics)
