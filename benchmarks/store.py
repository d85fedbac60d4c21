"""`mmrecall bench store`: the vector-store backends side by side in one run, on one synthetic catalogue.

For each backend (faiss in process, then Milvus: Milvus Lite's gRPC server from PyPI, reached by URL as a
cluster would be), on the same stored vectors:
- reindex_s / reindex_peak_gb: the real reindex job in a child process (with Milvus it writes the
  collection, and the v2v table is built from the store's searches);
- personal_ann_p99_ms / personal_ann_recall_at_100: single user-like queries through the served index's
  search (the personal channel's call), against exact search;
- recall_p99_ms / similar_p99_ms / *_qps: HTTP against `mmrecall serve` (API_WORKERS processes behind
  HAProxy where installed), 8 closed-loop clients;
- api_pss_mb / store_pss_mb: proportional set size of the API processes and of the store's server after
  the load (shared pages counted once between them);
- same_recall_answers_share: the share of 100 /v1/recall queries (the same histories) answered with the same
  ids in the same order by both backends (exact search on both below 20k items).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx
import numpy as np
import psutil

from mmrecall.benchmarks.common import low_rank_vectors, table, write_result
from mmrecall.benchmarks.perf import (
    RECALL_LUA,
    SCALES,
    _wait_serving,
    load,
    personal_ann,
    start_api,
    store_catalogue,
    timed_reindex,
)
from mmrecall.core.settings import Settings
from mmrecall.index.store import serving_store
from mmrecall.pipeline.balancer import haproxy_available
from mmrecall.pipeline.runner import start_milvus_lite

BACKENDS = ("faiss", "milvus")


def pss_mb(processes: list[psutil.Process]) -> float:
    """Proportional set size of the processes and their children, in MB (a shared page counts once)."""
    seen, total = set(), 0
    for process in processes:
        for member in [process, *process.children(recursive=True)]:
            if member.pid in seen:
                continue
            seen.add(member.pid)
            try:
                total += member.memory_full_info().pss
            except psutil.Error:
                pass
    return round(total / 1024**2, 1)


def serve_and_measure(settings: Settings, ids: list[str], n: int, snapshot: str, store_pid: int | None) -> dict:
    balancer = "haproxy" if haproxy_available() else "uvicorn"
    server, url = start_api(settings, balancer, 18000 + os.getpid() % 500)
    try:
        _wait_serving(url, server, snapshot)
        recall = load(url, None, RECALL_LUA % (n - 1))
        similar = load(
            url, None, f'return wrk.format("GET", string.format("/v1/similar/item%07d?k=50", math.random(0, {n - 1})))'
        )
        out = {"frontend": balancer, "load_generator": recall["load_generator"]}
        for name, measured in (("recall", recall), ("similar", similar)):
            out.update({f"{name}_{key}": measured[key] for key in ("p50_ms", "p99_ms", "qps")})
        out["http_errors"] = recall["errors"] + similar["errors"]
        out["answers"] = recall_answers(url, ids, n)
        out["api_pss_mb"] = pss_mb([psutil.Process(server.pid)])
        out["store_pss_mb"] = pss_mb([psutil.Process(store_pid)]) if store_pid else 0.0
        return out
    finally:
        server.terminate()
        server.wait(30)


def recall_answers(url: str, ids: list[str], n: int, queries: int = 100) -> list[list[str]]:
    """The ids /v1/recall answers for the same 100 histories of 20 random items (seeded), in order."""
    rng = np.random.default_rng(17)
    answers = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for picks in rng.integers(n, size=(queries, 20)):
            body = {"history": [ids[int(i)] for i in picks], "k": 50}
            answers.append([r["id"] for r in http.post("/v1/recall", json=body).json()["results"]])
    return answers


def same_share(first: list[list[str]], second: list[list[str]]) -> float:
    """The share of queries answered with the same ids in the same order."""
    return round(float(np.mean([a == b for a, b in zip(first, second, strict=True)])), 3)


def run(out: Path, scale: str = "100k", **_kw) -> dict:
    from mmrecall.benchmarks.common import wrk_available

    if not wrk_available():
        raise RuntimeError("bench store drives its load with wrk: apt-get install wrk")
    n = SCALES.get(scale, SCALES["100k"])
    result: dict = {"scale": scale, "items": n, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="mmrecall-store-") as tmp:
        home = Path(tmp)
        vectors = low_rank_vectors(n, 256, seed=11)
        milvus, milvus_url = start_milvus_lite(home / "milvus")
        try:
            for backend in BACKENDS:
                store_url = "faiss" if backend == "faiss" else milvus_url
                settings = Settings(home=home, vector_store=store_url)  # one catalogue, one snapshot per backend
                settings.ensure_dirs()
                if backend == BACKENDS[0]:
                    ids = store_catalogue(settings, vectors)
                reindex_s, peak_gb, job = timed_reindex(settings)
                measured = {"reindex_s": round(reindex_s, 1), "reindex_peak_gb": round(peak_gb, 2)}
                measured |= {k: job.get(k) for k in ("factory", "v2v_table_s", "ann_recall_at_100", "ef_search")}
                snapshot_dir = settings.snapshots_dir / job["snapshot"]
                store = serving_store(store_url, home=home)
                p99, recall_at_100 = personal_ann(snapshot_dir, vectors, store=store)
                measured |= {"personal_ann_p99_ms": p99, "personal_ann_recall_at_100": round(recall_at_100, 4)}
                measured |= serve_and_measure(settings, ids, n, job["snapshot"], milvus.pid if store else None)
                result["backends"][backend] = measured
                print(f"{backend}: { ({k: v for k, v in measured.items() if k != 'answers'}) }", flush=True)
        finally:
            milvus.kill()
            milvus.wait(30)
    answers = [m.pop("answers") for m in result["backends"].values()]
    result["same_recall_answers_share"] = same_share(*answers)  # 100 queries; exact search on both below 20k
    keys = [
        "reindex_s",
        "reindex_peak_gb",
        "v2v_table_s",
        "personal_ann_p99_ms",
        "personal_ann_recall_at_100",
        "recall_p99_ms",
        "recall_qps",
        "similar_p99_ms",
        "http_errors",
        "api_pss_mb",
        "store_pss_mb",
    ]
    rows = [{"backend": backend, **{k: m.get(k) for k in keys}} for backend, m in result["backends"].items()]
    print(table(rows, ["backend", *keys]))
    print(f"same /v1/recall answers (ids in order) on both backends: {result['same_recall_answers_share']:.0%}")
    write_result(out, "store", result)
    return result
