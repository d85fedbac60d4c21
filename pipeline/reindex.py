"""Rebuilding the serving structures from stored vectors (the reindex job), and activating an encoder
(backfill its vectors, then reindex): the previous snapshot serves until the atomic swap."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy.exc import OperationalError

from mmrecall.core.settings import Settings
from mmrecall.encoders import encoder_version
from mmrecall.encoders.content_g import CONFIG_FILE as G_CONFIG_FILE
from mmrecall.encoders.content_g import HELD_OUT_FILE, load_active_interests, load_g
from mmrecall.encoders.registry import checkpoint_dir
from mmrecall.finetune.common import EtaLogger
from mmrecall.finetune.export import user_tower_arrays
from mmrecall.finetune.sasrec import SEQUENTIAL_FILE
from mmrecall.index.ann import STORE_FACTORY, VectorIndex, choose_factory
from mmrecall.index.clusters import ClusterTable, popularity_prior
from mmrecall.index.item_meta import ItemMeta
from mmrecall.index.rankings import item_rankings
from mmrecall.index.store import VectorStore, collection_name, serving_store
from mmrecall.index.v2v import neighbor_table
from mmrecall.pipeline.encode import encode_batch, encode_from_stored, encoder_specs, load_encoder, weight_paths
from mmrecall.recall.serving import ServiceSources, ServingState
from mmrecall.recall.tuning import HeldOut, sample_queries, tune_recall
from mmrecall.storage import catalogue, snapshots
from mmrecall.storage.db import retry_while, session_scope

log = logging.getLogger(__name__)


def backfill_job(settings: Settings, job_id: str) -> dict:
    """The backfill task's work: the encoder its job row names (records its own failure on the row)."""
    with session_scope(settings.resolved_database_url) as session:
        spec = catalogue.get_job(session, job_id).params["encoder"]
    return backfill(settings, job_id, spec)


def backfill(settings: Settings, job_id: str, spec: str, *, batch_size: int = 64) -> dict:
    """Activate an encoder: re-encode the catalogue with it, rebuild the index from its vectors, then swap.

    Queries keep being served from the old snapshot until the new one is published; items ingested
    meanwhile are encoded with both encoders (the new one is `pending`).
    """
    url = settings.resolved_database_url
    encoder = load_encoder(settings, spec)
    with session_scope(url) as session:
        catalogue.set_encoder_state(session, "pending", spec)
        # what this job stored before (an earlier attempt, its worker lost) or the encode tasks stored since
        # it began is not encoded again; older vectors of the version (an encoder activated once before) are
        params = dict(catalogue.get_job(session, job_id).params or {})
        if "backfill_after_row" not in params:
            params["backfill_after_row"] = catalogue.last_vector_row(session)
            catalogue.update_job(session, job_id, params=params)
        encoded = catalogue.item_ids_with_vectors(session, encoder.version, after_row=params["backfill_after_row"])
        item_ids = [i for i in catalogue.ready_item_ids(session) if i not in encoded]
        catalogue.update_job(session, job_id, state="running", total=len(item_ids), done=0, message=encoder.version)
    skipped: dict[str, str] = {}
    from_stored = 0
    try:
        for start in range(0, len(item_ids), batch_size):
            chunk = item_ids[start : start + batch_size]
            with session_scope(url) as session:
                stored_ids, stored = encode_from_stored(session, encoder, chunk)
                rest = set(chunk) - set(stored_ids)
                items = catalogue.get_items(session, [i for i in chunk if i in rest])
            ids, vectors, failed = encode_batch(encoder, items, settings)
            ids, vectors = stored_ids + ids, np.concatenate([stored, vectors]) if len(stored) else vectors
            from_stored += len(stored_ids)
            skipped.update(failed)
            with session_scope(url) as session:
                if ids:
                    catalogue.store_vectors(
                        session, ids, vectors, encoder=encoder.name, version=encoder.version, mark_ready=False
                    )
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
            "encoded": len(item_ids),
            "encoded_from_stored_vectors": from_stored,
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
    version = version or encoder_version(spec, *weight_paths(settings))
    started = time.time()
    with session_scope(url) as session:
        total = catalogue.count_vectors(session, version)
        catalogue.update_job(session, job_id, state="running", total=total, done=0, message=version)
    if total == 0:
        raise ValueError(f"no vectors stored for encoder version {version}; nothing to index")
    store = serving_store(settings.vector_store, home=settings.home)  # StoreError: it does not answer
    collection = None  # the store collection this reindex wrote, until it serves
    target: Path | None = None  # the snapshot directory it builds into, until it serves
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
        writer = snapshots.SnapshotWriter(settings.snapshots_dir, job_id[:8])
        target = writer.directory
        if store is None:
            factory = choose_factory(len(ids), settings.index_factory, exact_below=settings.exact_search_below)
            built = VectorIndex.build(ids, matrix, factory)
        else:  # a new collection, searched by this snapshot; the alias moves to it once the snapshot serves
            collection = collection_name(settings.vector_store_alias, target.name)
            eta = EtaLogger(f"vectors into {collection}", len(ids), every_s=15.0)
            built = VectorIndex.in_store(store, collection, ids, matrix, progress=lambda done, _n: eta(done, {}))
            factory = STORE_FACTORY
        del matrix
        tuned = built.tune_search(settings.ann_target_recall)  # before save: the breadth is stored with it
        writer.index(built)
        with session_scope(url) as session:
            positions = built.position
            rows = catalogue.iter_item_meta(session)
            writer.item_meta(ItemMeta.build(len(built), ((positions[i], t, g) for i, t, g in rows if i in positions)))
            counts = catalogue.interaction_counts(session)
            created = catalogue.created_times(session)
            liked, liked_at = catalogue.positive_interactions(session, settings.event_rules)
        created_by_row = np.array([created.get(i, np.nan) for i in built.ids], np.float64)
        writer.created(created_by_row)
        liked_rows = np.array([positions.get(i, -1) for i in liked], np.int64)
        in_index = liked_rows >= 0
        writer.rankings(item_rankings(len(built), liked_rows[in_index], liked_at[in_index], created_by_row))
        writer.popularity(popularity_prior(np.array([counts.get(i, 0) for i in built.ids], np.float64)))

        def report(done: int, total: int, _metrics: dict) -> None:
            with session_scope(url) as session:
                catalogue.update_job(session, job_id, message=f"{version}: v2v table {done}/{total}")

        extras = write_recall_tables(settings, built, spec, writer, table=table, report=report)
        extras["cluster_s"] = round(cluster_s, 2)  # k-means ran above, before the rows were ordered
        meta = {
            "encoder_version": version,
            "count": len(ids),
            "factory": factory,
            **({"collection": collection} if collection else {}),
            "max_row": max_row,
            "job_id": job_id,
            "created_at": time.time(),
            **tuned,
            **extras,
        }
        tuned = tune_recall_set(settings, writer.directory, meta, spec, report, store=store)
        if tuned:
            meta["recall"] = tuned

        def write_clusters() -> None:
            with session_scope(url) as session:
                catalogue.set_cluster_ids(session, built.ids, table.assignment)

        # the database may still pick this transaction to break a deadlock with other writers of items
        retry_while(write_clusters, OperationalError, ("deadlock detected",), attempts=3, pause_s=1.0)
        writer.publish(meta)
        if store is not None and collection is not None:
            store.swap_alias(settings.vector_store_alias, collection)  # after CURRENT: what the API processes load
            collection = None  # serving: never dropped by this job from here on
        snapshots.prune(settings.snapshots_dir, store=store)
    except Exception as exc:
        with session_scope(url) as session:
            catalogue.update_job(session, job_id, state="failed", error=f"{type(exc).__name__}: {exc}")
        serving = snapshots.current_snapshot(settings.snapshots_dir)
        if target is not None and serving != target:  # half-written (a full disk, a kill): never served, removed
            shutil.rmtree(target, ignore_errors=True)
        unserved = collection is not None and serving != target
        if store is not None and unserved:
            try:
                if collection in store.collections():  # nothing serves it: no orphan collection is left behind
                    store.drop(collection)
            except Exception:  # the job's own error is the one to report
                log.exception("reindex: could not drop the unpublished collection %s", collection)
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
    return (
        [ids[i] for i in order],
        matrix[order],
        ClusterTable.from_assignment(table.centroids, table.assignment[order]),
    )


def write_recall_tables(
    settings: Settings,
    built: VectorIndex,
    spec: str,
    writer: snapshots.SnapshotWriter,
    *,
    table: ClusterTable | None = None,
    report: Callable | None = None,
) -> dict:
    """The structures the recall channels read, next to the ANN index in the snapshot directory
    (the k-means table is built here unless given)."""
    extras = {}
    if table is None:
        started = time.time()
        table = ClusterTable.build(np.asarray(built.vectors), settings.cluster_k or None)
        extras["cluster_s"] = round(time.time() - started, 2)
    writer.clusters(table)
    started = time.time()
    eta = EtaLogger("v2v table", len(built), on_progress=report, every_s=15.0)
    # one search per item: at the breadth that reaches the target recall for item queries (an item's own
    # neighbourhood needs less breadth than a user's blend of items), unless set
    ef_search = settings.v2v_table_ef_search
    if not ef_search and built.is_hnsw and len(built) > settings.v2v_table_size:
        ef_search, _ = built.search_breadth(settings.ann_target_recall, blend=1, k=settings.v2v_table_size)
    rows, scores = neighbor_table(
        built, n=settings.v2v_table_size, ef_search=ef_search, progress=lambda done, _total: eta(done, {})
    )
    writer.v2v_table(rows, scores)
    extras |= {
        "clusters": len(table.centroids),
        "v2v_table": int(rows.shape[1]),
        "v2v_table_ef_search": ef_search,
        "v2v_table_s": round(time.time() - started, 2),
    }
    directory = checkpoint_dir(spec)
    if directory is not None and (directory / G_CONFIG_FILE).is_file():
        writer.user_tower(user_tower_arrays(load_g(directory), load_active_interests(directory)))
        extras["user_tower"] = True
    if directory is not None and (directory / SEQUENTIAL_FILE).is_file():
        extras["sequential_items"] = write_sequential(directory / SEQUENTIAL_FILE, built.ids, writer)
    return extras


def write_sequential(path, row_items: list[str], writer: snapshots.SnapshotWriter) -> int:
    """The sequential model (finetune.sasrec.train_sequential's file) into the snapshot, each snapshot row
    given its id in the model (-1: an item the model never saw); returns how many rows it knows."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    model_id = {item: i for i, item in enumerate(arrays.pop("item_ids").tolist())}
    arrays["row_ids"] = np.array([model_id.get(item, -1) for item in row_items], np.int64)
    writer.sequential(arrays)
    return int((arrays["row_ids"] >= 0).sum())


def tune_recall_set(
    settings: Settings,
    directory,
    meta: dict,
    spec: str,
    report: Callable | None = None,
    *,
    store: VectorStore | None = None,
) -> dict | None:
    """The recall set's parameters tuned on G's held-out interactions (recall.tuning) over this snapshot,
    before it serves: None when the encoder is not a G checkpoint with held-out queries."""
    checkpoint = checkpoint_dir(spec)
    if checkpoint is None or not (checkpoint / HELD_OUT_FILE).is_file():
        return None
    started = time.time()
    queries = sample_queries([HeldOut(**q) for q in json.loads((checkpoint / HELD_OUT_FILE).read_text())])
    snapshots.write_meta(directory, meta)  # loadable, not yet serving
    state = ServingState.from_snapshot(snapshots.load_snapshot(directory, store=store))
    url = settings.resolved_database_url

    def sources_for(query: HeldOut) -> ServiceSources:
        times = dict(zip(query.history, query.times, strict=True)) if query.times else None
        return ServiceSources(state, url, history_times=times)

    def progress(done: int, total: int) -> None:
        if report and (done == total or done % 20 == 0):
            report(done, total, {})

    tuned = tune_recall(sources_for, queries, len(state.live), on_progress=progress)
    log.info("reindex: recall set tuned on %d held-out queries in %.1fs", len(queries), time.time() - started)
    return {**tuned, "seconds": round(time.time() - started, 1)} if tuned else None
