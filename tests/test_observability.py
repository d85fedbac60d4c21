"""/metrics as Prometheus text with the series operators need, request ids in responses and logs, /readyz
naming a missing snapshot, and metrics counted across several API processes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmrecall.core.logs import JsonFormatter
from mmrecall.pipeline.runner import free_port, settings_env, wait_for_api
from tests.helpers import Service, make_settings

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)


def scrape(http: httpx.Client) -> dict[str, list]:
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: list, name: str, *, missing: float | None = None, **labels) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if not found and missing is not None:
        return missing
    assert found, (name, labels, [s for s in samples if s.name == name][:5])
    return sum(found)


def test_metrics_cover_requests_channels_index_queue_and_workers(service: Service) -> None:
    http = service.http
    assert http.get("/readyz").json()["problems"].get("snapshot")  # nothing indexed yet: not ready
    items = [{"id": f"m{i}", "title": f"{['soup', 'golf'][i % 2]} {i}", "tags": ["t/a"]} for i in range(10)]
    ids = http.post("/v1/items", json={"items": items}).json()["ids"]
    service.wait_items(ids)
    job = service.wait_job(http.post("/v1/reindex").json()["job_id"])
    assert job["state"] == "succeeded"
    deadline = time.time() + 10
    while http.get("/readyz").status_code != 200:
        assert time.time() < deadline, http.get("/readyz").json()
        time.sleep(0.1)
    before = scrape(http)
    for _ in range(5):
        assert http.post("/v1/recall", json={"history": ["m0", "m1"], "k": 5}).status_code == 200  # the fast path
        assert http.get("/v1/items/m0").status_code == 200
    assert http.get("/v1/items/nope").status_code == 404
    after = scrape(http)

    def grew(name: str, **labels) -> float:
        old = value(before[name], name + "_total", missing=0.0, **labels) if name in before else 0.0
        return value(after[name], name + "_total", **labels) - old

    assert grew("mmrecall_http_requests", route="/v1/recall", method="POST", status="200") == 5
    assert grew("mmrecall_http_requests", route="/v1/items/{item_id}", method="GET", status="200") == 5
    assert grew("mmrecall_http_requests", route="/v1/items/{item_id}", method="GET", status="404") == 1
    latency = after["mmrecall_http_request_seconds"]
    assert value(latency, "mmrecall_http_request_seconds_count", route="/v1/recall") >= 5
    for channel in ("v2v", "cluster", "personal", "multi_interest"):
        assert (
            value(after["mmrecall_recall_channel_seconds"], "mmrecall_recall_channel_seconds_count", channel=channel)
            >= 5
        )
        assert (
            value(
                after["mmrecall_recall_channel_candidates"], "mmrecall_recall_channel_candidates_sum", channel=channel
            )
            > 0
        )
    assert value(after["mmrecall_index_items"], "mmrecall_index_items") == 10
    assert 0 <= value(after["mmrecall_snapshot_age_seconds"], "mmrecall_snapshot_age_seconds") < 600
    assert value(after["mmrecall_queue_depth"], "mmrecall_queue_depth") >= 0
    assert value(after["mmrecall_items"], "mmrecall_items", status="ready") == 10
    assert value(after["mmrecall_encode_items_per_second"], "mmrecall_encode_items_per_second") > 0
    assert value(after["mmrecall_jobs"], "mmrecall_jobs", kind="reindex", state="succeeded") >= 1
    assert value(after["mmrecall_job_last_duration_seconds"], "mmrecall_job_last_duration_seconds", kind="reindex") > 0


def test_request_ids_reach_the_response_and_the_logs(service: Service, caplog) -> None:
    http = service.http
    http.post("/v1/items", json={"items": [{"id": "rq", "title": "a title"}]})
    with caplog.at_level(logging.INFO, logger="mmrecall.api.routes.interactions"):
        rows = [{"user_id": "u", "item_id": "rq", "timestamp": 1.0}]
        answer = http.post("/v1/interactions", json={"interactions": rows}, headers={"X-Request-ID": "trace-42"})
    assert answer.status_code == 202 and answer.headers["x-request-id"] == "trace-42"
    records = [r for r in caplog.records if r.name == "mmrecall.api.routes.interactions"]
    assert records and records[-1].request_id == "trace-42"
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["request_id"] == "trace-42" and line["message"].startswith("stored 1")
    made_up = http.get("/healthz").headers["x-request-id"]
    assert len(made_up) == 16 and made_up != http.get("/healthz").headers["x-request-id"]


def test_metrics_add_up_across_api_processes(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path / "home", redis_url)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(port), "--workers", "2", "--no-access-log"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_api(url, timeout=60)
        # connections opened together until both processes have answered (they share the port: whichever
        # wakes first accepts, so a few connections may all land on one)
        clients = [httpx.Client(base_url=url, timeout=10) for _ in range(16)]
        try:
            processes, sent = set(), 0
            for _ in range(20):
                processes |= {client.get("/healthz").json()["process"] for client in clients}
                sent += len(clients)
                if len(processes) == 2:
                    break
            assert len(processes) == 2
            requests = scrape(clients[0])["mmrecall_http_requests"]
            counted = value(requests, "mmrecall_http_requests_total", route="/healthz")
            assert counted >= sent  # both processes' requests, whichever answered the scrape
        finally:
            for client in clients:
                client.close()
    finally:
        server.terminate()
        server.wait(30)
