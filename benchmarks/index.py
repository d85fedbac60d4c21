"""Index build and query latency on synthetic vectors: exact vs the ANN index, recall@100 vs exact."""

from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np

from mmrecall.benchmarks.common import low_rank_vectors, peak_rss_gb, percentiles_ms, table, write_result
from mmrecall.index.ann import VectorIndex, choose_factory

K = 100
QUERIES = 200
SCALES = {"100k": 100_000, "1m": 1_000_000}


def _measure(index: VectorIndex, queries: np.ndarray) -> tuple[dict, np.ndarray]:
    timings, found = [], []
    for query in queries:  # one query at a time: what a request does
        started = time.perf_counter()
        _, positions = index.search(query[None, :], K)
        timings.append(time.perf_counter() - started)
        found.append(positions[0])
    return percentiles_ms(timings), np.stack(found)


def run(out: Path, scale: str = "100k", dim: int = 256, **_kw) -> dict:
    sizes = [SCALES["100k"]] if scale == "100k" else [SCALES["100k"], SCALES["1m"]]
    rows = []
    for n in sizes:
        base = low_rank_vectors(n, dim, seed=1)
        queries = low_rank_vectors(QUERIES, dim, seed=2)
        ids = [str(i) for i in range(n)]
        for factory in ("Flat", choose_factory(n, "auto", exact_below=0)):
            started = time.perf_counter()
            index = VectorIndex.build(ids, base, factory)
            build_s = time.perf_counter() - started
            latency, found = _measure(index, queries)
            if factory == "Flat":
                truth = found
            recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))
            rows.append({"n": n, "factory": factory, "build_s": build_s, **latency, f"recall@{K}": recall})
            print(f"  n={n} {factory}: build {build_s:.1f}s, p50 {latency['p50_ms']:.2f} ms, recall {recall:.3f}")
            del index
    columns = ["n", "factory", "build_s", "p50_ms", "p99_ms", f"recall@{K}"]
    print(table(rows, columns))
    result = {
        "dim": dim,
        "queries": QUERIES,
        "threads": faiss.omp_get_max_threads(),
        "rows": rows,
        "peak_rss_gb": peak_rss_gb(),
    }
    write_result(out, "index", result)
    return result
