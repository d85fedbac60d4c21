"""`mmrecall bench perf`: the performance targets in one run, on a synthetic catalogue of the asked size.

- reindex_s / reindex_peak_gb: the real reindex job (ANN index, k-means cluster table, v2v top-100
  table) over vectors stored in the catalogue, in a child process whose peak memory is measured;
- similar_p99_ms / recall_p99_ms / recall_filtered_p99_ms: HTTP against API_WORKERS API processes, 8
  concurrent keep-alive clients from wrk when installed (else Python threads: `load_generator` says
  which); `frontends` holds them for each frontend of BALANCERS in one run on the same snapshot (with
  HAProxy, the requests each process served), the top-level ones are the first's;
- recall_cpu_ms (_filtered): where one /v1/recall's time goes, CPU ms in process per channel, merge and
  whole request (with the 2% tag filter); filtered_scan_recall_at_100: the scan behind that filter, once in
  use, against exact search over its rows;
- personal_ann_p99_ms / personal_ann_recall_at_100: the serving index (efSearch as the reindex tuned it)
  on user-like query vectors, single queries, against exact search;
- freshness_s: a vector stored as a worker stores it, until /v1/similar of its neighbour returns it;
- encode_efficiency: pipeline / raw items per second of the default encoder (benchmarks.encode);
- user_tower_{pool,seq}_p50_ms / _p99_ms: CPU cost of the user tower in the API process for one /v1/recall
  (a 50-item history, G's default sizes; the sequence tower with 4 interests, 2 blocks, 20 tags).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import insert

from mmrecall.benchmarks.common import (
    http_load,
    low_rank_vectors,
    percentiles_ms,
    table,
    write_result,
    wrk_available,
    wrk_load,
)
from mmrecall.benchmarks.encode import ENCODERS
from mmrecall.benchmarks.encode import run as encode_run
from mmrecall.core.features import gap_buckets
from mmrecall.core.interchange import ItemRecord
from mmrecall.core.settings import Settings
from mmrecall.encoders.content_g import GConfig, TwoTower
from mmrecall.finetune.export import export_user_tower
from mmrecall.index.ann import VectorIndex
from mmrecall.index.ranked import NO_ROWS
from mmrecall.index.store import VectorStore
from mmrecall.pipeline.balancer import haproxy_available, server_stats
from mmrecall.pipeline.reindex import reindex
from mmrecall.pipeline.runner import settings_env
from mmrecall.recall.channels import CHANNELS
from mmrecall.recall.filters import NO_FILTER, RecallFilter
from mmrecall.recall.merge import MergeWeights, merge
from mmrecall.recall.service import channel_candidates, recall_answer
from mmrecall.recall.serving import ServiceSources, ServingIndex, allowed_rows
from mmrecall.recall.sources import RecallConfig, history_rows
from mmrecall.recall.towers import load_user_tower
from mmrecall.storage import catalogue, snapshots
from mmrecall.storage.db import Item, ItemVector, get_engine, session_scope

SCALES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
VERSION = "bench@synthetic"
API_WORKERS = 2  # one API process per core; they share the snapshot's memory-mapped files
# the frontends in front of them, measured one after the other on the same snapshot (the first is the
# headline): HAProxy (leastconn per request; measured where the haproxy package is installed), then
# uvicorn's own workers sharing the port
BALANCERS = ("haproxy", "uvicorn")
DIM = 256


def store_catalogue(settings: Settings, vectors: np.ndarray) -> list[str]:
    ids = [f"item{i:07d}" for i in range(len(vectors))]
    engine = get_engine(settings.resolved_database_url)
    tags = [f"cat{i % 50}/sub{i % 7}" for i in range(50)]
    with engine.begin() as conn:
        for start in range(0, len(ids), 20_000):
            block = range(start, min(start + 20_000, len(ids)))
            conn.execute(
                insert(Item),
                [{"id": ids[i], "title": f"title {i}", "tags": [tags[i % 50]], "status": "ready"} for i in block],
            )
            conn.execute(
                insert(ItemVector),
                [
                    {
                        "item_id": ids[i],
                        "encoder": "bench",
                        "version": VERSION,
                        "dim": DIM,
                        "vector": vectors[i].astype("<f4").tobytes(),
                        "created_at": 0.0,
                    }
                    for i in block
                ],
            )
    return ids


def _reindex_child(settings_json: str, job_id: str) -> None:

    reindex(Settings.model_validate_json(settings_json), job_id, spec="bench", version=VERSION)


def timed_reindex(settings: Settings) -> tuple[float, float, dict]:
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, "reindex").id
    started = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=_reindex_child, args=(settings.model_dump_json(), job_id)
    )
    child.start()
    child.join()
    seconds = time.perf_counter() - started
    if child.exitcode != 0:
        raise RuntimeError(f"reindex failed (exit {child.exitcode})")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    with session_scope(settings.resolved_database_url) as session:
        result = catalogue.get_job(session, job_id).result
    return seconds, peak_gb, result


def personal_ann(
    snapshot_dir: Path, vectors: np.ndarray, queries: int = 300, *, store: VectorStore | None = None
) -> tuple[float, float]:
    """p99 ms of single user-vector queries on the serving index (in `store` when its reindex wrote to
    one), and recall@100 against exact search."""
    index = snapshots.load_snapshot(snapshot_dir, store=store).index
    rng = np.random.default_rng(5)
    picks = rng.integers(len(vectors), size=(queries, 20))
    users = vectors[picks].mean(axis=1)  # a user vector is a blend of the items they liked
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    timings, recalls = [], []
    # exact search over the snapshot's own rows (reindex stores them in its own order: cluster by cluster)
    exact = VectorIndex.build(index.ids, np.asarray(index.vectors), "Flat") if index.factory != "Flat" else index
    for user in users:
        started = time.perf_counter()
        _, found = index.search(user[None, :], 100)
        timings.append(time.perf_counter() - started)
        _, truth = exact.search(user[None, :], 100)
        recalls.append(len(set(found[0]) & set(truth[0])) / 100)
    return percentiles_ms(timings)["p99_ms"], float(np.mean(recalls))


def filtered_scan_recall(settings: Settings, recall_filter: RecallFilter, queries: int = 200) -> float | None:
    """recall@100 of the scan behind a selective filter once it is in use (recall.filters: fast-scan codes
    order the allowed rows, exact scores decide) against exact search over the same rows, on user-like
    queries; None when the filter is not answered by a scan."""
    serving = ServingIndex(settings)
    serving.refresh()
    filtered = allowed_rows(serving.state, recall_filter, settings.resolved_database_url, in_memory_only=True)
    if filtered is None or not filtered.exact or filtered.snapshot is None or filtered.snapshot.vectors is None:
        return None
    rows, gathered = filtered.snapshot.rows, filtered.snapshot.vectors
    rng = np.random.default_rng(6)
    users = np.asarray(serving.state.live.snapshot.vectors)[rng.integers(serving.state.live.base, size=(queries, 20))]
    users = users.mean(axis=1)
    users = (users / np.linalg.norm(users, axis=1, keepdims=True)).astype(np.float32)
    filtered.snapshot.in_use()
    found = filtered.search(users, 100, NO_ROWS)
    truth = [rows[np.argsort(-(gathered @ user), kind="stable")[:100]] for user in users]
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / 100 for (f, _), t in zip(found, truth, strict=True)])
    )


def recall_cpu(settings: Settings, n: int, requests: int = 200, recall_filter: RecallFilter = NO_FILTER) -> dict:
    """Mean CPU ms of one /v1/recall's work in process (no HTTP), per channel, for the merge, and in all:
    where a request's time goes. Histories of 20 random items, as the HTTP load sends; one search thread,
    as the API process runs them; with a filter, as the API applies it (its cached part built in warm-up)."""
    import faiss
    from threadpoolctl import threadpool_limits

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(settings.api_faiss_threads)
    try:
        with threadpool_limits(settings.api_faiss_threads):
            return _recall_cpu(settings, n, requests, recall_filter)
    finally:
        faiss.omp_set_num_threads(threads)


def _recall_cpu(settings: Settings, n: int, requests: int, recall_filter: RecallFilter) -> dict:

    serving = ServingIndex(settings)
    serving.refresh()
    state, url, rng = serving.state, settings.resolved_database_url, np.random.default_rng(1)
    histories = [[f"item{i:07d}" for i in rng.integers(n, size=20)] for _ in range(requests)]
    config = RecallConfig(per_channel=100)
    warm = allowed_rows(state, recall_filter, url, in_memory_only=True)
    if warm is not None and warm.snapshot is not None:
        warm.snapshot.in_use()  # the steady state, as under load

    def request_sources() -> ServiceSources:
        filtered = allowed_rows(state, recall_filter, url, in_memory_only=True)  # per request, as the API does
        return ServiceSources(state, url, in_memory_only=True, filtered=filtered)

    def cpu_ms(work) -> float:
        for history in histories[:20]:  # warm-up: steady state, not first touches
            sources = request_sources()
            work(history_rows(sources, history), sources, history)
        started = time.thread_time()
        for history in histories:
            sources = request_sources()
            work(history_rows(sources, history), sources, history)
        return round((time.thread_time() - started) / len(histories) * 1000, 3)

    out = {c: cpu_ms(lambda rows, s, _h, c=c: channel_candidates(s, rows, None, [c], config)) for c in CHANNELS}
    found = {}
    for history in histories:
        sources = request_sources()
        found[tuple(history)] = channel_candidates(sources, history_rows(sources, history), None, CHANNELS, config)
    out["merge"] = cpu_ms(
        lambda rows, s, h: merge(
            {c: r.normalized() for c, r in found[tuple(h)].items()},
            k=100,
            seen=np.unique(rows),
            categories=s.categories,
            weights=MergeWeights(),
        )
    )
    out["request"] = cpu_ms(lambda rows, s, h: recall_answer(s, rows, k=100, merge_weights=settings.merge))
    return out


def user_tower_cost(calls: int = 500) -> dict:
    """p50/p99 ms of one user-vector computation in numpy, as the API does per /v1/recall, per tower kind."""
    import torch

    out, rng = {}, np.random.default_rng(3)
    history = rng.normal(size=(50, 128)).astype(np.float32)
    times = np.cumsum(rng.exponential(3600, size=50))
    tags = [["drama"], ["comedy", "drama"]] * 25
    for kind, extra in (
        ("pool", {}),
        ("seq", {"interests": 4, "tag_vocab": tuple(f"t{i}" for i in range(19)) + ("drama",)}),
    ):
        torch.manual_seed(0)
        model = TwoTower(GConfig(feature_dim=8, user_tower=kind, **extra)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            tower = load_user_tower(export_user_tower(model, Path(tmp) / "tower.npz"))
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            if kind == "seq":
                tower(history, 12345, gaps=gap_buckets(times), tag_pref=tower.tag_preferences(tags))
            else:
                tower(history, 12345)
            timings.append(time.perf_counter() - started)
        measured = percentiles_ms(timings)
        out |= {f"user_tower_{kind}_p50_ms": measured["p50_ms"], f"user_tower_{kind}_p99_ms": measured["p99_ms"]}
    return out


def freshness(settings: Settings, url: str, vectors: np.ndarray, ids: list[str]) -> float:
    """Store a new vector right next to an existing item, then poll that item's neighbours."""
    anchor = 12345 % len(ids)
    new_vector = vectors[anchor] + 0.001 * np.random.default_rng(9).normal(size=DIM).astype(np.float32)
    new_vector /= np.linalg.norm(new_vector)
    with session_scope(settings.resolved_database_url) as session:
        catalogue.upsert_items(session, [catalogue_record("fresh-item")])
    started = time.perf_counter()
    with session_scope(settings.resolved_database_url) as session:
        catalogue.store_vectors(session, ["fresh-item"], new_vector[None, :], encoder="bench", version=VERSION)
    with httpx.Client(base_url=url, timeout=10) as http:
        while time.perf_counter() - started < 30:
            found = http.get(f"/v1/similar/{ids[anchor]}", params={"k": 10}).json()["results"]
            if "fresh-item" in {r["id"] for r in found}:
                return time.perf_counter() - started
            time.sleep(0.02)
    return float("inf")


def catalogue_record(item_id: str):

    return ItemRecord(id=item_id, title="a fresh item")


def run(out: Path, scale: str = "100k", **_kw) -> dict:
    n = SCALES.get(scale, SCALES["100k"])
    result: dict = {"scale": scale, "items": n, "dim": DIM}
    with tempfile.TemporaryDirectory(prefix="mmrecall-perf-") as tmp:
        settings = Settings(home=Path(tmp))  # the default refresh interval: what a deployment runs
        settings.ensure_dirs()
        vectors = low_rank_vectors(n, DIM, seed=11)
        started = time.perf_counter()
        ids = store_catalogue(settings, vectors)
        result["store_s"] = round(time.perf_counter() - started, 1)
        reindex_s, peak_gb, job = timed_reindex(settings)
        result.update(
            reindex_s=round(reindex_s, 1),
            reindex_peak_gb=round(peak_gb, 2),
            factory=job["factory"],
            reindex_parts={k: job.get(k) for k in ("cluster_s", "v2v_table_s", "clusters", "v2v_table_ef_search")},
        )
        snapshot_dir = settings.snapshots_dir / job["snapshot"]
        result["personal_ann_p99_ms"], result["personal_ann_recall_at_100"] = personal_ann(snapshot_dir, vectors)
        result["ef_search"] = job.get("ef_search")
        result["recall_cpu_ms"] = recall_cpu(settings, n)
        selective = RecallFilter(include_tags=(SELECTIVE_TAG,))
        result["recall_cpu_ms_filtered"] = recall_cpu(settings, n, recall_filter=selective)
        result["filtered_scan_recall_at_100"] = filtered_scan_recall(settings, selective)
        frontends = [b for b in BALANCERS if b != "haproxy" or haproxy_available()]
        result["api_workers"] = API_WORKERS
        result["frontends"] = {}
        for number, balancer in enumerate(frontends):  # the same snapshot, one after the other: they compare
            last = number == len(frontends) - 1  # the freshness probe adds an item: after every load
            measured = serve_and_load(settings, balancer, ids, n, job["snapshot"], vectors if last else None)
            result["frontends"][balancer] = measured
        result["frontend"] = frontends[0]
        result.update({k: v for k, v in result["frontends"][frontends[0]].items() if k != "process_requests"})
        result["freshness_s"] = result["frontends"][frontends[-1]].pop("freshness_s")

    encoded = encode_run(out, encoders=ENCODERS[:1], worker_scaling=False)
    result["encode_efficiency"] = encoded["rows"][0]["ratio"]
    result.update(user_tower_cost())
    rows = [{"metric": k, "value": v} for k, v in result.items() if not isinstance(v, dict)]
    print(table(rows, ["metric", "value"]))
    keys = ("similar_p99_ms", "recall_p99_ms", "recall_filtered_p99_ms", "recall_qps", "http_errors")
    by_frontend = [{"frontend": name, **{k: m[k] for k in keys}} for name, m in result["frontends"].items()]
    print(table(by_frontend, ["frontend", *keys]))
    parts = [
        {"part": k, "cpu_ms": v, "filtered_cpu_ms": result["recall_cpu_ms_filtered"][k]}
        for k, v in result["recall_cpu_ms"].items()
    ]
    print(table(parts, ["part", "cpu_ms", "filtered_cpu_ms"]))
    write_result(out, "perf", result)
    return result


# 20 random catalogue items as the history of one /v1/recall (as the Python client sends)
RECALL_LUA = """local ids = {}
for i = 1, 20 do ids[i] = string.format('"item%%07d"', math.random(0, %d)) end
return wrk.format("POST", "/v1/recall", {["Content-Type"] = "application/json"},
                  '{"history": [' .. table.concat(ids, ",") .. '], "k": 100}')"""


# a first-level tag that 2% of the bench's items carry (store_catalogue: one of 50 tags each)
SELECTIVE_TAG = "cat7"
FILTERED_RECALL_LUA = RECALL_LUA.replace('"k": 100}', '"k": 100, "include_tags": ["' + SELECTIVE_TAG + '"]}')


def filtered_completeness(url: str, ids: list[str], n: int, requests: int = 200) -> float:
    """The share of filtered recalls (SELECTIVE_TAG, k=100) that come back with all k items."""
    import httpx

    rng, full = np.random.default_rng(5), 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(requests):
            history = [ids[int(i)] for i in rng.integers(n, size=20)]
            body = {"history": history, "k": 100, "include_tags": [SELECTIVE_TAG]}
            answer = http.post("/v1/recall", json=body).json()
            full += len(answer["results"]) == 100 and answer["short_by"] == 0
    return round(full / requests, 3)


def serve_and_load(
    settings: Settings, balancer: str, ids: list[str], n: int, snapshot: str, vectors: np.ndarray | None
) -> dict:
    """`mmrecall serve --workers API_WORKERS --balancer B` on the snapshot, then the loads: /v1/similar,
    /v1/recall, /v1/recall with the selective filter; with HAProxy, the requests each process served; with
    `vectors`, then the freshness probe."""
    server, url = start_api(settings, balancer, 18500 + os.getpid() % 500)
    try:
        _wait_serving(url, server, snapshot)
        similar = load(
            url,
            lambda http, rng: http.get(f"/v1/similar/{ids[int(rng.integers(n))]}", params={"k": 50}),
            f'return wrk.format("GET", string.format("/v1/similar/item%07d?k=50", math.random(0, {n - 1})))',
        )
        recall = load(
            url,
            lambda http, rng: http.post(
                "/v1/recall", json={"history": [ids[int(i)] for i in rng.integers(n, size=20)], "k": 100}
            ),
            RECALL_LUA % (n - 1),
        )
        filtered = load(
            url,
            lambda http, rng: http.post(
                "/v1/recall",
                json={
                    "history": [ids[int(i)] for i in rng.integers(n, size=20)],
                    "k": 100,
                    "include_tags": [SELECTIVE_TAG],
                },
            ),
            FILTERED_RECALL_LUA % (n - 1),
        )
        out: dict = {"load_generator": similar["load_generator"]}
        for name, measured in (("similar", similar), ("recall", recall), ("recall_filtered", filtered)):
            out.update({f"{name}_{key}": measured[key] for key in ("p50_ms", "p99_ms", "qps")})
        out["http_errors"] = similar["errors"] + recall["errors"] + filtered["errors"]
        out["filter"] = {"include_tags": [SELECTIVE_TAG], "share_of_items": 1 / 50}
        out["recall_filtered_p99_ratio"] = round(filtered["p99_ms"] / recall["p99_ms"], 2)
        out["recall_filtered_full_share"] = filtered_completeness(url, ids, n)
        if balancer == "haproxy":  # how HAProxy spread the requests: per process, from its stats socket
            out["process_requests"] = {k: v["total"] for k, v in server_stats(settings.home / "haproxy.sock").items()}
        if vectors is not None:
            out["freshness_s"] = round(freshness(settings, url, vectors, ids), 3)
        return out
    finally:
        server.terminate()
        server.wait(30)


def start_api(settings: Settings, balancer: str, port: int) -> tuple[subprocess.Popen, str]:
    """`mmrecall serve --workers API_WORKERS --balancer B` on the port, in its own process; (it, its URL)."""
    command = [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(port), "--workers", str(API_WORKERS)]
    server = subprocess.Popen(
        [*command, "--balancer", balancer, "--no-access-log"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, f"http://127.0.0.1:{port}"


def load(url: str, python_request, lua_request: str, *, seconds: float = 10.0) -> dict:
    """8 closed-loop clients from wrk when it is installed (far less client CPU), else from Python threads."""
    if wrk_available():
        wrk_load(url, lua_request, seconds=2.0)  # warm-up
        return wrk_load(url, lua_request, seconds=seconds)
    return http_load(url, python_request, seconds=seconds)


def _wait_serving(url: str, server: subprocess.Popen, snapshot: str, timeout: float = 600) -> None:
    """Until every API process serves the snapshot (consecutive answers land on different processes)."""
    deadline = time.time() + timeout
    in_a_row = 0
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the API exited")
        try:
            with httpx.Client(timeout=5) as http:  # a new connection each time: any process may answer
                serving = http.get(f"{url}/healthz").json().get("snapshot") == snapshot
            in_a_row = in_a_row + 1 if serving else 0
            if in_a_row >= 10:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the API did not load the snapshot")
