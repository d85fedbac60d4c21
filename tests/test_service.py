"""End to end over real HTTP, a real Celery worker process, the real Redis and a real database."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mmrecall.benchmarks.common import wrk_available, wrk_load
from tests.helpers import Service

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def cover(service: Service, name: str, colour: str) -> str:
    path = service.settings.media_roots[0] / f"{name}.png"
    Image.new("RGB", (80, 60), COLOURS[colour]).save(path)
    return str(path)


def items_payload(service: Service, prefix: str, n: int = 6) -> list[dict]:
    topics = [("pasta recipe", "food/noodles", "red"), ("tennis serve", "sports/tennis", "blue")]
    return [
        {
            "id": f"{prefix}{i}",
            "title": f"{topics[i % 2][0]} {i}",
            "tags": [topics[i % 2][1]],
            "cover": cover(service, f"{prefix}{i}", topics[i % 2][2]),
        }
        for i in range(n)
    ]


def test_ingest_encode_and_similar(service: Service) -> None:
    http = service.http
    response = http.post("/v1/items", json={"items": items_payload(service, "a")})
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    states = service.wait_items(ids)
    assert {s["status"] for s in states.values()} == {"ready"}
    assert all(s["versions"] and s["versions"][0].startswith("tiny-test@") for s in states.values())

    deadline = time.time() + 10  # the API picks new vectors up from the change feed
    while True:
        result = http.get("/v1/similar/a0", params={"k": 3})
        if result.status_code == 200 and len(result.json()["results"]) == 3:
            break
        assert time.time() < deadline, result.text
        time.sleep(0.2)
    body = result.json()
    assert body["item_id"] == "a0"
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert "a0" not in [r["id"] for r in body["results"]]
    # same topic, same tag, same cover colour: the nearest neighbour is a sibling
    assert body["results"][0]["id"] in {"a2", "a4"} and body["results"][0]["title"].startswith("pasta")


def test_bad_input_gets_clear_errors_and_spares_the_rest(service: Service, tmp_path: Path) -> None:
    http = service.http
    assert http.get("/v1/similar/no-such-item").status_code == 404
    assert http.get("/v1/items/no-such-item").status_code == 404
    root = service.settings.media_roots[0]
    (root / "notimage.png").write_bytes(b"plain text, not pixels")
    good = items_payload(service, "b", 2)
    response = http.post(
        "/v1/items",
        json={
            "items": [
                *good,
                {"id": "b-missing", "title": "lost cover", "cover": str(root / "missing.png")},
                {"id": "b-corrupt", "title": "bad cover", "cover": str(root / "notimage.png")},
            ]
        },
    )
    assert response.status_code == 202
    states = service.wait_items(response.json()["ids"])
    assert states["b-missing"]["status"] == "failed" and "not found" in states["b-missing"]["error"]
    assert states["b-corrupt"]["status"] == "failed" and states["b-corrupt"]["error"]
    assert states["b0"]["status"] == "ready" and states["b1"]["status"] == "ready"
    conflict = http.get("/v1/similar/b-missing")
    assert conflict.status_code == 409 and "failed" in conflict.json()["detail"]

    outside = tmp_path / "outside.png"
    Image.new("RGB", (10, 10)).save(outside)
    escape = http.post("/v1/items", json={"items": [{"id": "x", "cover": str(root / ".." / ".." / outside.name)}]})
    assert escape.status_code == 400 and "outside" in escape.json()["detail"]
    assert http.post("/v1/items", json={"items": [{"id": "x", "cover": str(outside)}]}).status_code == 400
    assert http.get("/v1/items/x").status_code == 404  # nothing stored for a refused request
    assert http.post("/v1/items", json={"items": []}).status_code == 422
    assert http.post("/v1/items", json={"items": [{"title": "no id"}]}).status_code == 422
    assert http.get("/v1/similar/b0", params={"k": 0}).status_code == 422


def test_upload_cover(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "up.png"
    Image.new("RGB", (40, 40), COLOURS["green"]).save(path)
    with path.open("rb") as handle:
        response = service.http.post(
            "/v1/items/upload", data={"id": "up1", "title": "uploaded", "tags": "a/b,c"}, files={"cover": handle}
        )
    assert response.status_code == 202, response.text
    state = service.wait_items(["up1"])["up1"]
    assert state["status"] == "ready" and state["tags"] == ["a/b", "c"]
    bad = service.http.post("/v1/items/upload", data={"id": "up2"}, files={"cover": ("x.png", b"nope")})
    assert bad.status_code == 400 and "not a readable image" in bad.json()["detail"]


def test_reindex_swaps_snapshot_and_new_items_stay_queryable(service: Service) -> None:
    http = service.http
    ids = http.post("/v1/items", json={"items": items_payload(service, "c", 4)}).json()["ids"]
    service.wait_items(ids)
    created = http.post("/v1/reindex")
    assert created.status_code == 202
    job = service.wait_job(created.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["result"]["count"] >= 4
    deadline = time.time() + 10
    while http.get("/healthz").json()["snapshot"] != job["result"]["snapshot"]:
        assert time.time() < deadline
        time.sleep(0.1)
    # an item encoded after the reindex is found without another one
    new = items_payload(service, "d", 1)
    new[0]["title"], new[0]["tags"] = "pasta recipe fresh", ["food/noodles"]
    http.post("/v1/items", json={"items": new})
    assert service.wait_items(["d0"])["d0"]["status"] == "ready"
    deadline = time.time() + 10
    while "d0" not in [r["id"] for r in http.get("/v1/similar/c0", params={"k": 50}).json()["results"]]:
        assert time.time() < deadline, "new item never appeared"
        time.sleep(0.1)
    assert http.get("/v1/jobs/nope").status_code == 404


def test_interactions(service: Service) -> None:
    http = service.http
    ok = http.post("/v1/interactions", json={"interactions": [{"user_id": "u1", "item_id": "a0", "timestamp": 5}]})
    assert ok.status_code == 202 and ok.json() == {"count": 1}
    unknown = http.post("/v1/interactions", json={"interactions": [{"user_id": "u", "item_id": "zz", "timestamp": 1}]})
    assert unknown.status_code == 400 and "zz" in unknown.json()["detail"]


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
def test_openapi_docs(service: Service, path: str) -> None:
    assert service.http.get(path).status_code == 200


def test_eval_runs_as_a_worker_job(service: Service) -> None:
    from mmrecall.core.demo_data import generate_demo

    dataset = generate_demo(service.settings.media_roots[0] / "evalset", per_leaf=3, users=12)
    created = service.http.post("/v1/eval", json={"dataset": str(dataset), "channels": ["v2v"], "encoder": "tiny-test"})
    assert created.status_code == 202, created.text
    job = service.wait_job(created.json()["job_id"], timeout=300)
    assert job["state"] == "succeeded", job
    assert job["done"] == job["total"] == 14  # 7 channels (6 baselines + v2v) x 2 protocols, each a step
    assert set(job["result"]["channels"]) == {"random", "popular", "itemcf", "mf", "sasrec", "text_v2v", "v2v"}
    refused = service.http.post("/v1/eval", json={"dataset": "/etc"})
    assert refused.status_code == 400


def test_recall_clusters_and_deletes_across_every_channel(service: Service) -> None:
    http = service.http
    ids = http.post("/v1/items", json={"items": items_payload(service, "r", 12)}).json()["ids"]
    service.wait_items(ids)
    rows = [{"user_id": "ru", "item_id": f"r{i}", "timestamp": 100 + i} for i in (0, 2, 1)]
    assert http.post("/v1/interactions", json={"interactions": rows}).status_code == 202
    job = service.wait_job(http.post("/v1/reindex").json()["job_id"])
    assert job["state"] == "succeeded" and job["result"]["clusters"] >= 1
    deadline = time.time() + 10
    while http.get("/healthz").json()["snapshot"] != job["result"]["snapshot"]:
        assert time.time() < deadline
        time.sleep(0.1)

    by_history = http.post("/v1/recall", json={"history": ["r0", "r2"], "k": 20})
    assert by_history.status_code == 200, by_history.text
    body = by_history.json()
    personal = {"v2v", "cluster", "personal", "multi_interest"}
    # two items are under the fallback threshold (3): the non-personalised channels join in
    assert body["history_used"] == 2 and set(body["channels"]) == personal | {"popular", "trending", "latest"}
    assert body["fallback"]
    assert not {"r0", "r2"} & {r["id"] for r in body["results"]}
    for result in body["results"]:
        assert result["channels"] and all(source["channel"] in result["channels"] for source in result["sources"])
    assert any(source.get("trigger") in {"r0", "r2"} for r in body["results"] for source in r["sources"])
    # u2i2i: the user's nearest items (personal's top 10) expanded through v2v; each result names its seed
    only = {"history": ["r0", "r2"], "k": 20}
    nearest = http.post("/v1/recall", json={**only, "k": 10, "channels": ["personal"]}).json()["results"]
    expanded = http.post("/v1/recall", json={**only, "channels": ["u2i2i"]}).json()["results"]
    seeds = {source["trigger"] for r in expanded for source in r["sources"]}
    assert expanded and seeds and seeds <= {r["id"] for r in nearest} and not seeds & {"r0", "r2"}
    by_user = http.post("/v1/recall", json={"user_id": "ru", "k": 5, "channels": ["v2v"]}).json()
    assert by_user["history_used"] == 3 and len(by_user["results"]) == 5
    nobody = http.post("/v1/recall", json={"user_id": "nobody"}).json()  # a new user: the fallback channels
    assert nobody["fallback"] and nobody["results"] and set(nobody["channels"]) == {"popular", "trending", "latest"}
    assert http.post("/v1/recall", json={"user_id": "ru", "history": ["r0"]}).status_code == 422
    assert http.post("/v1/recall", json={"history": ["no-such-item"]}).status_code == 400

    cluster_id = http.get("/v1/items/r0").json()["cluster_id"]
    listing = http.get(f"/v1/clusters/{cluster_id}").json()
    assert "r0" in {i["id"] for i in listing["items"]} and listing["size"] >= 1
    assert http.get("/v1/clusters/99999").status_code == 404
    mates = http.get("/v1/similar/r0", params={"channel": "cluster", "k": 50}).json()["results"]
    assert all(http.get(f"/v1/items/{m['id']}").json()["cluster_id"] == cluster_id for m in mates[:5])

    victim = http.get("/v1/similar/r0", params={"k": 1}).json()["results"][0]["id"]
    assert http.delete(f"/v1/items/{victim}").status_code == 204
    assert http.delete(f"/v1/items/{victim}").status_code == 404
    assert http.get(f"/v1/similar/{victim}").status_code == 404
    for channel in ("v2v", "cluster"):
        assert victim not in {
            r["id"] for r in http.get("/v1/similar/r0", params={"k": 100, "channel": channel}).json()["results"]
        }
    recalled = http.post("/v1/recall", json={"history": ["r0", "r2"], "k": 100}).json()["results"]
    assert victim not in {r["id"] for r in recalled}
    # and after the next reindex too
    job = service.wait_job(http.post("/v1/reindex").json()["job_id"])
    deadline = time.time() + 10
    while http.get("/healthz").json()["snapshot"] != job["result"]["snapshot"]:
        assert time.time() < deadline
        time.sleep(0.1)
    recalled = http.post("/v1/recall", json={"history": ["r0", "r2"], "k": 100}).json()["results"]
    assert victim not in {r["id"] for r in recalled}
    assert victim not in {r["id"] for r in http.get("/v1/similar/r0", params={"k": 100}).json()["results"]}


def test_activating_another_encoder_backfills_and_swaps(service: Service) -> None:
    http = service.http
    ids = http.post("/v1/items", json={"items": items_payload(service, "e", 4)}).json()["ids"]
    service.wait_items(ids)
    before = http.get("/healthz").json()
    assert http.post("/v1/encoders/activate", json={"encoder": "no-such"}).status_code == 400
    created = http.post("/v1/encoders/activate", json={"encoder": "tiny-dual"})
    assert created.status_code == 202
    job = service.wait_job(created.json()["job_id"], timeout=300)
    assert job["state"] == "succeeded", job
    assert job["result"]["encoder_version"].startswith("tiny-dual@") and job["done"] == job["total"]
    deadline = time.time() + 10
    while not (http.get("/healthz").json()["encoder_version"] or "").startswith("tiny-dual@"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert before["encoder_version"].startswith("tiny-test@")
    assert http.get("/v1/encoders").json()["active"] == "tiny-dual"
    assert len(http.get("/v1/similar/e0", params={"k": 3}).json()["results"]) == 3
    # an item ingested now is encoded by the new encoder
    http.post("/v1/items", json={"items": items_payload(service, "f", 1)})
    assert any(v.startswith("tiny-dual@") for v in service.wait_items(["f0"])["f0"]["versions"])


@pytest.mark.skipif(not wrk_available(), reason="wrk is not installed")
def test_wrk_load_generator_counts_requests_and_errors(service: Service) -> None:
    """The benchmarks' load generator: its Lua-built requests reach the API, and non-2xx answers count."""
    ok = wrk_load(service.api.url, 'return wrk.format("GET", "/healthz")', clients=2, seconds=1)
    assert ok["requests"] > 10 and ok["errors"] == 0 and 0 < ok["p50_ms"] <= ok["p99_ms"] <= ok["max_ms"]
    missing = wrk_load(service.api.url, 'return wrk.format("GET", "/v1/similar/no-such-item")', clients=2, seconds=1)
    assert missing["requests"] > 0 and missing["errors"] == missing["requests"]


def test_fast_paths_answer_like_the_framework_routes(service: Service) -> None:
    """/v1/similar and /v1/recall beneath the framework (api.fast) give the FastAPI routes' bodies, and
    hand every request they cannot answer from memory to those routes."""
    from mmrecall.api.fast import recall_answer, similar_answer
    from tests.helpers import ApiServer

    http = service.http
    ids = http.post("/v1/items", json={"items": items_payload(service, "fp", 8)}).json()["ids"]
    service.wait_items(ids)
    job = service.wait_job(http.post("/v1/reindex").json()["job_id"])
    deadline = time.time() + 10
    while http.get("/healthz").json()["snapshot"] != job["result"]["snapshot"]:
        assert time.time() < deadline
        time.sleep(0.1)
    requests = [
        ("GET", f"/v1/similar/{i}", {"params": {"k": k, "channel": c}})
        for i in ids[:4]
        for k, c in ((3, "v2v"), (50, "v2v"), (5, "cluster"))
    ]
    requests += [
        ("POST", "/v1/recall", {"json": {"history": ids[:3], "k": 10}}),
        (
            "POST",
            "/v1/recall",
            {"json": {"history": ids[2:6], "times": [1.0, 2.0, 3.0, 4.0], "k": 5, "channels": ["v2v", "personal"]}},
        ),
        ("GET", "/v1/similar/no-such-item", {}),
        ("GET", f"/v1/similar/{ids[0]}", {"params": {"k": 0}}),
        ("GET", f"/v1/similar/{ids[0]}", {"params": {"channel": "nope"}}),
        ("POST", "/v1/recall", {"json": {"history": ["no-such-item"]}}),
        ("POST", "/v1/recall", {"json": {"history": ids[:2], "k": 0}}),
        ("POST", "/v1/recall", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ]
    settings = service.settings.model_copy(update={"api_fast_paths": False})
    with ApiServer(settings) as framework, httpx.Client(base_url=framework.url, timeout=30) as plain:
        for method, path, options in requests:
            fast, slow = http.request(method, path, **options), plain.request(method, path, **options)
            assert fast.status_code == slow.status_code, (path, options, fast.text, slow.text)
            assert fast.json() == slow.json(), (path, options)
    # and the fast path did answer the well-formed ones itself (the others went on to the routes)
    app = service.api.server.config.app
    scope = {
        "type": "http",
        "app": app,
        "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json")],
    }
    assert similar_answer({**scope, "path": f"/v1/similar/{ids[0]}", "query_string": b"k=3"}) is not None
    assert similar_answer({**scope, "path": f"/v1/similar/{ids[0]}", "query_string": b"k=0"}) is None
    assert similar_answer({**scope, "path": "/v1/similar/no-such-item", "query_string": b""}) is None
    assert (
        similar_answer({**scope, "client": ("10.1.2.3", 1), "path": f"/v1/similar/{ids[0]}", "query_string": b""})
        is None
    )
    assert recall_answer(scope, b'{"history": ["fp0", "fp1"], "k": 5}') is not None
    assert recall_answer(scope, b'{"user_id": "someone"}') is None
