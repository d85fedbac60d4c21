"""Item vectors for evaluation: the registered encoders over the dataset, cached on disk."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmrecall.core.dataset import Dataset
from mmrecall.encoders import encoder_version, get_encoder
from mmrecall.encoders.media import MediaError, load_content

log = logging.getLogger(__name__)


def encode_dataset(
    data: Dataset, encoder_name: str, *, cache: Path | None = None, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """float32 (n_items, d), L2-normalized, from the same encoder and media loading the workers use.

    An item whose media cannot be decoded is encoded from its text alone (and counted in the log).
    """
    path = cached_vectors_path(data, encoder_name, cache) if cache else None
    if path is not None and path.is_file():
        return np.load(path)
    encoder = get_encoder(encoder_name)
    # longest texts first, as sentence-transformers orders a corpus: each batch then holds texts of about one
    # length and pads little (the vectors go back to item order below)
    order = sorted(range(data.n_items), key=lambda i: -len(data.items[i].title) - sum(map(len, data.items[i].tags)))
    chunks, media_errors = [], 0
    for start in tqdm(range(0, data.n_items, batch_size), desc=f"encoding {encoder_name}", disable=not progress):
        batch = []
        for item in (data.items[i] for i in order[start : start + batch_size]):
            try:
                batch.append(
                    load_content(
                        item.title,
                        item.tags,
                        item.cover,
                        item.frames,
                        item.video,
                        images=encoder.uses_images,
                        n_frames=encoder.n_frames,
                    )
                )
            except MediaError:
                media_errors += 1
                batch.append(load_content(item.title, item.tags, None, None, images=False))
        chunks.append(encoder.encode(batch))
    if media_errors:
        log.warning("%s: %d items encoded without their media (undecodable)", encoder_name, media_errors)
    vectors = np.empty((data.n_items, encoder.dim), np.float32)
    vectors[order] = np.concatenate(chunks)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def cached_vectors_path(data: Dataset, encoder_name: str, cache: Path) -> Path:
    """Where `encode_dataset` keeps the dataset's vectors from an encoder (by the dataset's fingerprint and
    the encoder's version): the train job puts the vectors the workers stored there, so they are not
    computed again."""
    return cache / f"vectors-{data.fingerprint}-{encoder_version(encoder_name).replace('@', '-')}.npy"
