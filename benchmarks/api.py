"""HTTP latency of /v1/similar under concurrent load on loopback: p50, p99, QPS.

A catalogue of synthetic items (SQLite) with a published snapshot, the real API in its own process
(`mmrecall serve`), and concurrent keep-alive clients in this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

from mmrecall.benchmarks.common import http_load, low_rank_vectors, table, write_result
from mmrecall.core.settings import Settings
from mmrecall.index.ann import VectorIndex, choose_factory
from mmrecall.pipeline.runner import settings_env
from mmrecall.storage import snapshots
from mmrecall.storage.db import Item, get_engine

VERSION = "bench@synthetic"


def build_catalogue(settings: Settings, n: int, dim: int) -> list[str]:
    ids = [f"item{i:07d}" for i in range(n)]
    engine = get_engine(settings.resolved_database_url)
    with engine.begin() as conn:
        for start in range(0, n, 20_000):
            conn.execute(
                insert(Item),
                [{"id": i, "title": f"title {i}", "tags": [], "status": "ready"} for i in ids[start : start + 20_000]],
            )
    vectors = low_rank_vectors(n, dim, seed=3)
    factory = choose_factory(n, settings.index_factory, exact_below=settings.exact_search_below)
    writer = snapshots.SnapshotWriter(settings.snapshots_dir, "bench")
    writer.index(VectorIndex.build(ids, vectors, factory))
    writer.publish({"encoder_version": VERSION, "count": n, "factory": factory, "max_row": 0})
    return ids


def run(out: Path, items: int = 100_000, dim: int = 256, clients: int = 8, seconds: float = 15.0, **_kw) -> dict:
    with tempfile.TemporaryDirectory(prefix="mmrecall-bench-api-") as tmp:
        settings = Settings(home=Path(tmp), refresh_interval_s=1.0)
        settings.ensure_dirs()
        ids = build_catalogue(settings, items, dim)
        port = 18000 + os.getpid() % 1000
        env = settings_env(settings)
        server = subprocess.Popen(
            [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).json().get("snapshot"):
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("API did not come up")
                time.sleep(0.3)

            def request(http, rng):
                return http.get(f"/v1/similar/{ids[int(rng.integers(len(ids)))]}", params={"k": 50})

            http_load(url, request, clients=clients, seconds=2.0)  # warm-up
            rows = [
                {
                    "endpoint": "/v1/similar?k=50",
                    "items": items,
                    "clients": clients,
                    **http_load(url, request, clients=clients, seconds=seconds),
                }
            ]
        finally:
            server.terminate()
            server.wait(30)
    print(table(rows, ["endpoint", "items", "clients", "requests", "errors", "qps", "p50_ms", "p99_ms"]))
    result = {"rows": rows, "dim": dim, "factory": choose_factory(items)}
    write_result(out, "api", result)
    return result
