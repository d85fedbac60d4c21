"""Serving from a vector store (index.store) end to end: a real worker's reindex writes a Milvus collection
(Milvus Lite's gRPC server, reached by URL as a cluster would be) and moves the alias; the API's searches go
there and answer what exact search over the snapshot's vectors answers; what cannot be served is refused
with its reason at start-up, and a running API keeps its snapshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmrecall.core.settings import Settings
from mmrecall.index.store import collection_name, open_store
from mmrecall.pipeline.runner import free_port, settings_env, start_milvus_lite
from tests.helpers import Service, make_settings, running_service
from tests.test_service import items_payload


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_milvus_lite(tmp_path_factory.mktemp("milvus"))
    yield url
    process.kill()
    process.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_url: str, milvus: str) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("store-service")
    settings = make_settings(home, redis_url, vector_store=milvus, vector_store_alias=f"t_{uuid.uuid4().hex[:12]}")
    with running_service(settings) as service:
        yield service


def exact_neighbours(snapshot_dir: Path, item: str, k: int) -> list[str]:
    ids = json.loads((snapshot_dir / "ids.json").read_text())
    vectors = np.load(snapshot_dir / "vectors.npy")
    scores = vectors @ vectors[ids.index(item)]
    return [ids[i] for i in np.argsort(-scores, kind="stable") if ids[i] != item][:k]


def test_reindex_writes_a_collection_moves_the_alias_and_the_api_searches_there(served: Service, milvus: str) -> None:
    http, settings = served.http, served.settings
    ids = http.post("/v1/items", json={"items": items_payload(served, "m", 12)}).json()["ids"]
    assert {s["status"] for s in served.wait_items(ids).values()} == {"ready"}
    first = served.reindex()["result"]
    store = open_store(milvus, home=settings.home)
    collection = collection_name(settings.vector_store_alias, first["snapshot"])
    assert first["collection"] == collection and first["factory"] == "store"
    assert store.resolve(settings.vector_store_alias) == collection and store.count(collection) == 12
    snapshot_dir = settings.snapshots_dir / first["snapshot"]
    assert not (snapshot_dir / "index.faiss").exists()  # no faiss index of its own: the store searches
    # the v2v table (built from the store's searches) and the live search answer as exact search does
    for item in ("m0", "m5"):
        expected = exact_neighbours(snapshot_dir, item, 5)
        assert [r["id"] for r in http.get(f"/v1/similar/{item}", params={"k": 5}).json()["results"]] == expected
    # an item encoded after the reindex is searched in the delta beside the collection
    new = items_payload(served, "n", 1)
    http.post("/v1/items", json={"items": new})
    assert served.wait_items(["n0"])["n0"]["status"] == "ready"
    deadline = time.time() + 10
    while "n0" not in [r["id"] for r in http.get("/v1/similar/m0", params={"k": 12}).json()["results"]]:
        assert time.time() < deadline, "the new item never appeared"
        time.sleep(0.1)

    # each reindex writes a new collection; the alias follows CURRENT; pruned snapshots take theirs along
    later = [served.reindex()["result"] for _ in range(3)]
    collections = [collection] + [r["collection"] for r in later]
    assert len(set(collections)) == 4 and store.resolve(settings.vector_store_alias) == collections[-1]
    assert collection not in store.collections()  # its snapshot was pruned (3 kept)
    assert set(collections[1:]) <= set(store.collections())
    assert http.get("/readyz").json()["problems"].get("vector_store") is None
    status = subprocess.run(
        [sys.executable, "-m", "mmrecall.cli", "status"], env=settings_env(settings), capture_output=True, text=True
    )
    assert json.loads(status.stdout)["vector_store"]["serving_collection"] == collections[-1], status.stderr


def serve_check(settings: Settings, *, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    """`mmrecall serve`'s start-up check, with the settings' environment plus `env` (it exits before serving
    when the check fails; otherwise it is stopped by the timeout, serving)."""
    environment = {**settings_env(settings), **env}
    command = [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(free_port())]
    try:
        return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # it passed the check and served
        text = [out.decode() if isinstance(out, bytes) else out or "" for out in (exc.stdout, exc.stderr)]
        return subprocess.CompletedProcess(command, 0, *text)


def test_what_cannot_be_served_is_refused_and_the_running_snapshot_serves_on(served: Service, milvus: str) -> None:
    http, settings = served.http, served.settings
    if http.get("/healthz").json()["snapshot"] is None:
        served.reindex()
    serving = http.get("/healthz").json()["snapshot"]
    good = http.get("/v1/similar/m0", params={"k": 3}).json()["results"]
    root = settings.snapshots_dir
    store = open_store(milvus, home=settings.home)

    # the store does not answer
    dead = serve_check(settings, MMRECALL_VECTOR_STORE=f"milvus://127.0.0.1:{free_port()}")
    assert dead.returncode == 2 and "vector store: the Milvus at" in dead.stderr and "does not answer" in dead.stderr
    # the serving snapshot was written to a store and none is configured
    unset = serve_check(settings, MMRECALL_VECTOR_STORE="faiss")
    assert unset.returncode == 2 and "no vector store is configured" in unset.stderr

    def publish_copy(collection: str) -> str:
        """A copy of the serving snapshot that names another collection, made the current one."""
        name = f"{serving}-copy-{collection}"
        shutil.copytree(root / serving, root / name)
        info = json.loads((root / name / "index.json").read_text())
        (root / name / "index.json").write_text(json.dumps({**info, "collection": collection}))
        (root / "CURRENT").write_text(name)
        return name

    try:
        # a missing collection: refused at start-up; the running API keeps its snapshot and says why
        missing = publish_copy("t_missing_collection")
        refused = serve_check(settings)
        assert refused.returncode == 2 and "no collection or alias 't_missing_collection'" in refused.stderr
        deadline = time.time() + 10
        while "vector_store" not in http.get("/readyz").json()["problems"]:
            assert time.time() < deadline, "the refusal never showed in /readyz"
            time.sleep(0.1)
        assert missing in http.get("/readyz").json()["problems"]["vector_store"]
        assert http.get("/healthz").json()["snapshot"] == serving
        assert http.get("/v1/similar/m0", params={"k": 3}).json()["results"] == good
        # a collection of vectors of another dimension
        store.create("t_three_dims", 3)
        store.upsert("t_three_dims", ["x"], np.ones((1, 3), np.float32) / np.sqrt(3))
        publish_copy("t_three_dims")
        mismatch = serve_check(settings)
        assert mismatch.returncode == 2 and "holds 3-dimensional vectors" in mismatch.stderr
        assert http.get("/healthz").json()["snapshot"] == serving
    finally:
        (root / "CURRENT").write_text(serving)
    deadline = time.time() + 10
    while "vector_store" in http.get("/readyz").json()["problems"]:  # the pointer is back on what serves
        assert time.time() < deadline, "the refusal outlived the snapshot it was about"
        time.sleep(0.1)
    # restored: the check passes (the server starts and is stopped by the timeout)
    restored = serve_check(settings, timeout=8)
    assert restored.returncode == 0 and "vector store" not in restored.stderr
    assert os.environ.get("MMRECALL_VECTOR_STORE") is None  # nothing leaked into this process


def test_the_store_pings_no_faster_than_the_server_allows_after_a_probe_in_the_same_process(
    milvus: str, tmp_path: Path
) -> None:
    # start_milvus_lite probed the server from this process. pymilvus 3 shares one gRPC channel per address, so
    # the store used to inherit the probe's 10 s keepalive, and an idle spell of about a minute ended in
    # GOAWAY "too_many_pings" with a call in flight (bench store's Milvus leg). The store has its own channel.
    store = open_store(milvus, home=tmp_path)
    handler = store.client._handler  # pymilvus 3's per-client connection
    assert handler._grpc_options.get("grpc.keepalive_time_ms") == 300_000
