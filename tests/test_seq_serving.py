"""The sequence tower served over real HTTP: a G checkpoint with `user_tower="seq"` is the active encoder; a real
worker encodes and reindexes (exporting the tower to numpy); /v1/recall answers personal recall from the
user's active interests, with the history's times read from the stored interactions or the request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.helpers import ApiServer, Service, make_settings

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)


@pytest.fixture(scope="module")
def seq_service(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    from mmrecall.core.demo_data import generate_demo
    from mmrecall.finetune.g_job import train_g
    from mmrecall.finetune.g_train import GTrainConfig
    from mmrecall.pipeline.runner import start_worker, wait_for_workers

    home = tmp_path_factory.mktemp("seq")
    settings = make_settings(home, redis_url)
    dataset = generate_demo(settings.media_roots[0] / "demo", per_leaf=4, users=20)
    report = train_g(
        dataset,
        features=("tiny-test",),
        out_root=home / "ckpt",
        cache=home / "cache",
        progress=False,
        train=GTrainConfig(epochs=1, batch_size=32, random_negatives=16),
        user_tower="seq",
        interests=3,
        history=10,
    )
    # merge weights from the settings (as `mmrecall eval` would tune them): score = similarity alone
    settings = make_settings(home, redis_url, encoder=report["checkpoint"], merge={"alpha": 0.0, "beta": 0.0})
    worker = start_worker(settings, concurrency=1, pool="solo", log_path=str(home / "worker.log"))
    try:
        wait_for_workers(settings, timeout=90)
        with ApiServer(settings) as api:
            service = Service(settings, api)
            yield service, dataset
            service.http.close()
    finally:
        worker.terminate()
        worker.wait(30)
        redis.Redis.from_url(redis_url).delete(settings.queue)


def test_recall_from_the_sequence_towers_active_interests(seq_service) -> None:
    from mmrecall.core.interchange import read_items

    service, dataset = seq_service
    http = service.http
    items = [record.model_dump() for record in list(read_items(Path(dataset)))[:16]]
    ids = http.post("/v1/items", json={"items": items}).json()["ids"]
    states = service.wait_items(ids)
    assert {s["status"] for s in states.values()} == {"ready"}, states
    rows = [{"user_id": "seq-user", "item_id": ids[i], "timestamp": 1_700_000_000 + 3600 * i} for i in range(6)]
    assert http.post("/v1/interactions", json={"interactions": rows}).status_code == 202
    job = service.wait_job(http.post("/v1/reindex").json()["job_id"])
    assert job["state"] == "succeeded" and job["result"].get("user_tower"), job.get("error")
    deadline = time.time() + 10
    while http.get("/healthz").json()["snapshot"] != job["result"]["snapshot"]:
        assert time.time() < deadline
        time.sleep(0.1)

    by_user = http.post("/v1/recall", json={"user_id": "seq-user", "k": 5, "channels": ["personal"]})
    assert by_user.status_code == 200, by_user.text
    results = by_user.json()["results"]
    assert len(results) == 5 and not set(ids[:6]) & {r["id"] for r in results}
    assert all(r["channels"] == ["personal"] for r in results)
    assert all(r["score"] == r["similarity"] for r in results)  # MMRECALL_MERGE reached the API (MIC adds 0.5)
    history = {
        "history": ids[:6],
        "times": [1_700_000_000 + 3600 * i for i in range(6)],
        "k": 5,
        "channels": ["personal"],
    }
    with_times = http.post("/v1/recall", json=history).json()["results"]
    assert [r["id"] for r in with_times] and len(with_times) == 5
    assert http.post("/v1/recall", json={**history, "times": [0.0]}).status_code == 422  # one time per item
