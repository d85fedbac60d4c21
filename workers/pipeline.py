"""What the workers do, as plain functions (the tasks only wrap them): encode items, rebuild the index."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from encoders import ContentInput, Encoder, encoder_version, get_encoder
from encoders.content_g import load_active_interests, load_g
from encoders.media import MediaError, load_content
from encoders.registry import checkpoint_dir
from index.ann import VectorIndex, choose_factory
from index.clusters import ClusterTable
from index.item_meta import ItemMeta
from index.personal import export_user_tower
from index.v2v import neighbor_table
from mmrecall.fetch import FetchError, fetch_media, is_url
from mmrecall.settings import Settings
from storage import catalogue, snapshots
from storage.db import Item, session_scope

log = logging.getLogger(__name__)


def _weights(settings: Settings) -> tuple[str | None, str | None]:
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
    return get_encoder(spec, *_weights(settings))


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
    )


def encode_batch(
    encoder: Encoder, items: dict[str, Item], settings: Settings | None = None
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(encoded ids, float32 vectors, {failed id: reason}); a bad item never stops the others."""
    inputs: dict[str, ContentInput] = {}
    failed: dict[str, str] = {}
    for item_id, item in items.items():
        try:
            inputs[item_id] = content_of(item, encoder, settings)
        except MediaError as exc:
            failed[item_id] = str(exc)
    ids = list(inputs)
    try:
        vectors = encoder.encode([inputs[i] for i in ids]) if ids else np.zeros((0, encoder.dim), np.float32)
    except Exception as exc:  # a model error must not leave items stuck in `encoding`
        log.exception("encode failed for %d items", len(ids))
        failed.update({i: f"encode error: {type(exc).__name__}: {exc}" for i in ids})
        return [], np.zeros((0, encoder.dim), np.float32), failed
    return ids, vectors, failed


def encode_items(settings: Settings, item_ids: Sequence[str]) -> dict[str, int]:
    """Encode items with the active encoder (and a pending one being backfilled); each item ends
    `ready` or `failed` with a reason."""
    active, pending = encoder_specs(settings)
    encoder = load_encoder(settings, active)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        items, given_up = catalogue.start_encoding(session, item_ids, max_attempts=settings.max_encode_attempts)
    ids, vectors, failed = encode_batch(encoder, items, settings)
    extra = None
    if pending and pending != active:
        extra_encoder = load_encoder(settings, pending)
        extra = (extra_encoder, *encode_batch(extra_encoder, {i: items[i] for i in ids}, settings)[:2])
    with session_scope(url) as session:
        if ids:
            catalogue.store_vectors(session, ids, vectors, encoder=encoder.name, version=encoder.version)
        if extra is not None and extra[1]:
            catalogue.store_vectors(session, extra[1], extra[2], encoder=extra[0].name, version=extra[0].version,
                                    mark_ready=False)  # fmt: skip
        for item_id, reason in failed.items():
            catalogue.set_status(session, [item_id], "failed", reason)
    skipped = set(item_ids) - set(items) - set(given_up)  # unknown, or finished already (a redelivery)
    return {"ready": len(ids), "failed": len(failed) + len(given_up), "skipped": len(skipped)}


def backfill(settings: Settings, job_id: str, spec: str, *, batch_size: int = 64) -> dict:
    """Activate an encoder: re-encode the catalogue with it, rebuild the index from its vectors, then swap.

    Queries keep being served from the old snapshot until the new one is published; items ingested
    meanwhile are encoded with both encoders (the new one is `pending`).
    """
    url = settings.resolved_database_url
    encoder = load_encoder(settings, spec)
    with session_scope(url) as session:
        catalogue.set_encoder_state(session, "pending", spec)
        item_ids = catalogue.ready_item_ids(session)
        catalogue.update_job(session, job_id, state="running", total=len(item_ids), done=0, message=encoder.version)
    skipped: dict[str, str] = {}
    try:
        for start in range(0, len(item_ids), batch_size):
            chunk = item_ids[start : start + batch_size]
            with session_scope(url) as session:
                items = catalogue.get_items(session, chunk)
            ids, vectors, failed = encode_batch(encoder, items, settings)
            skipped.update(failed)
            with session_scope(url) as session:
                if ids:
                    catalogue.store_vectors(session, ids, vectors, encoder=encoder.name, version=encoder.version,
                                            mark_ready=False)  # fmt: skip
                catalogue.update_job(session, job_id, done=start + len(chunk))
            log.info("backfill %s: %d/%d items", encoder.version, start + len(chunk), len(item_ids))
        result = reindex(settings, job_id, spec=spec, finish=False)
    except Exception as exc:
        with session_scope(url) as session:
            catalogue.clear_encoder_state(session, "pending")
            catalogue.update_job(session, job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    with session_scope(url) as session:
        catalogue.set_encoder_state(session, "active", spec)
        catalogue.clear_encoder_state(session, "pending")
        result = {
            **result,
            "encoder": spec,
            "skipped": len(skipped),
            "skipped_examples": dict(list(skipped.items())[:5]),
        }
        catalogue.update_job(session, job_id, state="succeeded", result=result)
    return result


def reindex(
    settings: Settings, job_id: str, *, spec: str | None = None, version: str | None = None, finish: bool = True
) -> dict:
    """Rebuild every serving structure from the stored vectors of an encoder and publish them as the
    new snapshot: the ANN index, the k-means cluster table (cluster ids also stored per item), the v2v
    neighbour table, and for a G encoder its user tower.

    The previous snapshot keeps serving until the atomic swap at the end; a failure leaves it in place.
    """
    url = settings.resolved_database_url
    spec = spec or encoder_specs(settings)[0]
    version = version or encoder_version(spec, *_weights(settings))
    started = time.time()
    with session_scope(url) as session:
        total = catalogue.count_vectors(session, version)
        catalogue.update_job(session, job_id, state="running", total=total, done=0, message=version)
    if total == 0:
        raise ValueError(f"no vectors stored for encoder version {version}; nothing to index")
    try:
        ids: list[str] = []
        matrix: np.ndarray | None = None  # filled in place: memory grows with the index, not with copies
        max_row = 0
        with session_scope(url) as session:
            for chunk_ids, chunk, last_row in catalogue.iter_vectors(session, version, chunk=20_000):
                if matrix is None:
                    matrix = np.empty((total, chunk.shape[1]), np.float32)
                take = min(len(chunk_ids), total - len(ids))  # rows written since the count wait for the feed
                matrix[len(ids) : len(ids) + take] = chunk[:take]
                ids.extend(chunk_ids[:take])
                max_row = last_row if take == len(chunk_ids) else max_row
                with session_scope(url) as progress:
                    catalogue.update_job(progress, job_id, done=len(ids))
                log.info("reindex %s: read %d/%d vectors", job_id, len(ids), total)
                if len(ids) >= total:
                    break
        matrix = matrix[: len(ids)]
        started_clusters = time.time()
        table = ClusterTable.build(matrix, settings.cluster_k or None)
        ids, matrix, table = cluster_ordered(ids, matrix, table)
        cluster_s = time.time() - started_clusters
        log.info("reindex: %d clusters in %.1fs", len(table.centroids), cluster_s)
        factory = choose_factory(len(ids), settings.index_factory, exact_below=settings.exact_search_below)
        built = VectorIndex.build(ids, matrix, factory)
        del matrix
        tuned = built.tune_search(settings.ann_target_recall)  # before save: the breadth is stored with it
        target = snapshots.new_snapshot_dir(settings.snapshots_dir, job_id[:8])
        built.save(target)
        with session_scope(url) as session:
            positions = built.position
            rows = catalogue.iter_item_meta(session)
            ItemMeta.build(len(built), ((positions[i], t, g) for i, t, g in rows if i in positions)).save(target)

        def report(done: int, total: int, _metrics: dict) -> None:
            with session_scope(url) as session:
                catalogue.update_job(session, job_id, message=f"{version}: v2v table {done}/{total}")

        extras = write_recall_tables(settings, built, spec, target, table=table, report=report)
        extras["cluster_s"] = round(cluster_s, 2)  # k-means ran above, before the rows were ordered
        meta = {
            "encoder_version": version,
            "count": len(ids),
            "factory": factory,
            "max_row": max_row,
            "job_id": job_id,
            "created_at": time.time(),
            **tuned,
            **extras,
        }
        with session_scope(url) as session:
            catalogue.set_cluster_ids(session, built.ids, np.load(target / "clusters-assignment.npy"))
        snapshots.publish(settings.snapshots_dir, target, meta)
        snapshots.prune(settings.snapshots_dir)
    except Exception as exc:
        with session_scope(url) as session:
            catalogue.update_job(session, job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    result = {**meta, "snapshot": target.name, "seconds": round(time.time() - started, 3)}
    if finish:
        with session_scope(url) as session:
            catalogue.update_job(session, job_id, state="succeeded", done=len(ids), result=result)
    return result


def cluster_ordered(
    ids: list[str], matrix: np.ndarray, table: ClusterTable
) -> tuple[list[str], np.ndarray, ClusterTable]:
    """The snapshot's rows stored cluster by cluster: a cluster's members are then one contiguous block
    of the vectors (the cluster channel reads ~500 of them per trigger at 1M items: a slice instead of
    a gather from all over the map), and near neighbours tend to sit near each other in memory."""
    order = np.argsort(table.assignment, kind="stable")
    return [ids[i] for i in order], matrix[order], ClusterTable.from_assignment(table.centroids,
                                                                                 table.assignment[order])


def write_recall_tables(
    settings: Settings,
    built: VectorIndex,
    spec: str,
    target: Path,
    *,
    table: ClusterTable | None = None,
    report: Callable | None = None,
) -> dict:
    """The structures the recall channels read, next to the ANN index in the snapshot directory
    (the k-means table is built here unless given)."""
    from finetune.common import EtaLogger

    extras = {}
    if table is None:
        started = time.time()
        table = ClusterTable.build(np.asarray(built.vectors), settings.cluster_k or None)
        extras["cluster_s"] = round(time.time() - started, 2)
    table.save(target / "clusters")
    started = time.time()
    eta = EtaLogger("v2v table", len(built), on_progress=report, every_s=15.0)
    # one search per item: at the breadth that reaches the target recall for item queries (an item's own
    # neighbourhood needs less breadth than a user's blend of items), unless set
    ef_search = settings.v2v_table_ef_search
    if not ef_search and built.is_hnsw and len(built) > settings.v2v_table_size:
        ef_search, _ = built.search_breadth(settings.ann_target_recall, blend=1, k=settings.v2v_table_size)
    rows, scores = neighbor_table(built, n=settings.v2v_table_size, ef_search=ef_search,
                                  progress=lambda done, _total: eta(done, {}))  # fmt: skip
    np.save(target / "v2v-rows.npy", rows)
    np.save(target / "v2v-scores.npy", scores)
    extras |= {"clusters": len(table.centroids), "v2v_table": int(rows.shape[1]), "v2v_table_ef_search": ef_search,
               "v2v_table_s": round(time.time() - started, 2)}  # fmt: skip
    directory = checkpoint_dir(spec)
    if directory is not None and (directory / "g.json").is_file():
        export_user_tower(load_g(directory), target / "user_tower.npz", load_active_interests(directory))
        extras["user_tower"] = True
    return extras


def evaluate(settings: Settings, job_id: str) -> dict:
    """Run `mmrecall eval` as a job: parameters from the job row, progress onto it, report into it."""
    import json

    from evaluation.harness import plot_report, run_eval
    from workers.jobs import run_job

    def work(job, report) -> dict:
        params = dict(job.params)
        result = run_eval(
            Path(params["dataset"]),
            channels=params.get("channels"),
            protocol=params.get("protocol", "both"),
            split=params.get("split", "test"),
            cache=Path(params["cache"]) if params.get("cache") else settings.home / "eval-cache",
            encoder=params.get("encoder") or settings.encoder,
            progress=False,
            on_progress=lambda step, done, total: report(done, total, step),
        )
        if params.get("out"):
            Path(params["out"]).write_text(json.dumps(result, indent=2))
        if params.get("plot"):
            plot_report(result, Path(params["plot"]))
        return result

    report = run_job(settings, job_id, work)
    return {"job_id": job_id, "channels": list(report["channels"]), "cold": list(report["cold"])}
