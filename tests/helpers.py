"""What the tests share besides fixtures: data paths, service URLs, settings for a test home, the real API
on a loopback port, and a client that waits on the service."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from mmrecall.api.app import create_app
from mmrecall.benchmarks.faults import isolated_settings
from mmrecall.core.settings import Settings
from mmrecall.pipeline.runner import free_port, wait_for_api

SHARED_DATA = Path(os.environ.get("MMRECALL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# a database of its own on the broker: the tests never touch what a developer keeps in database 0
REDIS_URL = os.environ.get("MMRECALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("MMRECALL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def shared_dataset(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


def make_settings(home: Path, redis_url: str, **overrides) -> Settings:
    return isolated_settings(home, redis_url, queue_prefix="mmrecall-test", **overrides)


class ApiServer:
    """The real app under uvicorn on a loopback port, in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        wait_for_api(self.url, timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Service:
    def __init__(self, settings: Settings, api: ApiServer) -> None:
        self.settings, self.api = settings, api
        self.http = httpx.Client(base_url=api.url, timeout=30)

    def wait_items(self, ids: list[str], timeout: float = 120) -> dict[str, dict]:
        deadline = time.time() + timeout
        while True:
            states = {i: self.http.get(f"/v1/items/{i}").json() for i in ids}
            if all(s.get("status") in ("ready", "failed") for s in states.values()):
                return states
            if time.time() > deadline:
                raise TimeoutError(states)
            time.sleep(0.2)

    def wait_job(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while True:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed") or time.time() > deadline:
                return job
            time.sleep(0.2)

    def serve_catalogue(self, items: list[dict], interactions: list[dict]) -> dict:
        """Ingest items (all must end ready) and interactions, reindex, and wait until the API serves the new
        snapshot; the reindex job."""
        ids = self.http.post("/v1/items", json={"items": items}).json()["ids"]
        assert {s["status"] for s in self.wait_items(ids).values()} == {"ready"}
        assert self.http.post("/v1/interactions", json={"interactions": interactions}).status_code == 202
        job = self.wait_job(self.http.post("/v1/reindex").json()["job_id"])
        assert job["state"] == "succeeded", job
        deadline = time.time() + 10
        while self.http.get("/healthz").json()["snapshot"] != job["result"]["snapshot"]:
            assert time.time() < deadline
            time.sleep(0.1)
        return job
