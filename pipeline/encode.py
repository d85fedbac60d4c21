"""Encoding items as the workers do: the active (and pending) encoder over each item's decoded media;
every item ends `ready` with a vector or `failed` with a reason."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sqlalchemy.orm import Session

from mmrecall.core.fetch import FetchError, fetch_media, is_url
from mmrecall.core.settings import Settings
from mmrecall.encoders import ContentInput, Encoder, get_encoder
from mmrecall.encoders.media import MediaError, load_content
from mmrecall.pipeline.thumbnails import write_thumbnails
from mmrecall.storage import catalogue
from mmrecall.storage.db import Item, session_scope

log = logging.getLogger(__name__)


def weight_paths(settings: Settings) -> tuple[str | None, str | None]:
    checkpoint = str(settings.image_checkpoint) if settings.image_checkpoint else None
    return checkpoint, str(settings.text_model_dir) if settings.text_model_dir else None


def encoder_specs(settings: Settings) -> tuple[str, str | None]:
    """(active, pending) encoder specs: a registry name or a checkpoint directory.

    The active one is what an activation made active (stored in the catalogue), else `settings.encoder`;
    the pending one is being backfilled and gets every new item too, so nothing is missing at the swap.
    """
    with session_scope(settings.resolved_database_url) as session:
        state = catalogue.encoder_state(session)
    return state.get("active", settings.encoder), state.get("pending")


def load_encoder(settings: Settings, spec: str) -> Encoder:
    return get_encoder(spec, *weight_paths(settings))


def active_encoder(settings: Settings) -> Encoder:
    return load_encoder(settings, encoder_specs(settings)[0])


def local_media(item: Item, settings: Settings | None) -> tuple[str | None, list[str] | None, str | None]:
    """(cover, frames, video) as local paths: URLs are fetched (allow-listed hosts only)."""

    def local(path: str | None) -> str | None:
        if not is_url(path):
            return path
        if settings is None:
            raise MediaError(f"media URL {path} cannot be fetched here")
        try:
            return str(fetch_media(path, settings))
        except FetchError as exc:
            raise MediaError(str(exc)) from exc

    frames = [local(f) for f in item.frames] if item.frames else item.frames
    return local(item.cover), frames, local(item.video)


def content_of(item: Item, encoder: Encoder, settings: Settings | None = None) -> ContentInput:
    """Decode what the encoder needs of an item's media; raises MediaError with the reason."""
    cover, frames, video = local_media(item, settings) if encoder.uses_images else (None, None, None)
    return load_content(
        item.title,
        item.tags,
        cover,
        frames,
        video,
        images=encoder.uses_images,
        n_frames=encoder.n_frames,
        item_id=item.id,  # G adds the item bias EPi of items it was trained on, as its training scored them
    )


def encode_batch(
    encoder: Encoder,
    items: dict[str, Item],
    settings: Settings | None = None,
    *,
    frame_counts: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(encoded ids, float32 vectors, {failed id: reason}); a bad item never stops the others.
    frame_counts: when given, a video or frame-list item's thumbnails are written (for the inspector) and
    its (frames the encoder read, thumbnails kept) recorded here."""
    inputs: dict[str, ContentInput] = {}
    failed: dict[str, str] = {}
    for item_id, item in items.items():
        try:
            inputs[item_id] = content_of(item, encoder, settings)
        except MediaError as exc:
            failed[item_id] = str(exc)
            continue
        if frame_counts is not None and settings is not None and (item.video or item.frames):
            thumbnails = write_thumbnails(settings, item, local_media(item, settings))
            frame_counts[item_id] = (len(inputs[item_id].all_frames()), thumbnails)
    ids = list(inputs)
    try:
        vectors = encoder.encode([inputs[i] for i in ids]) if ids else np.zeros((0, encoder.dim), np.float32)
    except Exception as exc:  # a model error must not leave items stuck in `encoding`
        log.exception("encode failed for %d items", len(ids))
        failed.update({i: f"encode error: {type(exc).__name__}: {exc}" for i in ids})
        return [], np.zeros((0, encoder.dim), np.float32), failed
    return ids, vectors, failed


def encode_from_stored(session: Session, encoder: Encoder, item_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """For an encoder over other encoders' vectors (G): (ids, vectors) of the items whose input vectors the
    workers stored under the versions it reads, encoded from those without decoding media or running the
    base models again (an activation at 100k items: seconds instead of many minutes). Others: none."""
    versions = getattr(encoder, "feature_versions", None)
    if not versions or not item_ids:
        return [], np.zeros((0, encoder.dim), np.float32)
    parts = [catalogue.vectors_of(session, item_ids, version) for version in versions]
    ids = [i for i in item_ids if all(i in part for part in parts)]
    if not ids:
        return [], np.zeros((0, encoder.dim), np.float32)
    features = np.concatenate([np.stack([part[i] for i in ids]) for part in parts], axis=1)  # (n, F)
    return ids, encoder.encode_features(features, ids)


def encode_items(settings: Settings, item_ids: Sequence[str]) -> dict[str, int]:
    """Encode items with the active encoder (and a pending one being backfilled); each item ends
    `ready` or `failed` with a reason."""
    active, pending = encoder_specs(settings)
    encoder = load_encoder(settings, active)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        items, given_up = catalogue.start_encoding(session, item_ids, max_attempts=settings.max_encode_attempts)
    frame_counts: dict[str, tuple[int, int]] = {}  # the active encoder's pass writes the thumbnails, once
    ids, vectors, failed = encode_batch(encoder, items, settings, frame_counts=frame_counts)
    extra = None
    if pending and pending != active:
        extra_encoder = load_encoder(settings, pending)
        extra = (extra_encoder, *encode_batch(extra_encoder, {i: items[i] for i in ids}, settings)[:2])
    with session_scope(url) as session:
        if ids:
            catalogue.store_vectors(session, ids, vectors, encoder=encoder.name, version=encoder.version)
            catalogue.set_frame_counts(session, {i: counts for i, counts in frame_counts.items() if i in ids})
        if extra is not None and extra[1]:
            catalogue.store_vectors(
                session, extra[1], extra[2], encoder=extra[0].name, version=extra[0].version, mark_ready=False
            )
        for item_id, reason in failed.items():
            catalogue.set_status(session, [item_id], "failed", reason)
    skipped = set(item_ids) - set(items) - set(given_up)  # unknown, or finished already (a redelivery)
    return {"ready": len(ids), "failed": len(failed) + len(given_up), "skipped": len(skipped)}
