"""What the tests share besides fixtures: data paths, service URLs, settings for a test home, the real API
on a loopback port, and a client that waits on the service."""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from mmrecall.api.app import create_app
from mmrecall.benchmarks.faults import isolated_settings
from mmrecall.core.settings import Settings
from mmrecall.pipeline.runner import free_port, start_milvus_lite, start_worker, wait_for_api, wait_for_workers

SHARED_DATA = Path(os.environ.get("MMRECALL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# a database of its own on the broker: the tests never touch what a developer keeps in database 0
REDIS_URL = os.environ.get("MMRECALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("MMRECALL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def shared_dataset(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


# "milvus": the service tests' second pass (the README's test command), every snapshot searched in a Milvus
# (Milvus Lite's server, one per test session) instead of its own faiss index
VECTOR_STORE = os.environ.get("MMRECALL_TEST_VECTOR_STORE", "faiss")
_milvus_servers: list[str] = []


def milvus_url() -> str:
    """The test session's Milvus Lite server (started on first use, stopped when the session ends)."""
    if not _milvus_servers:
        process, url = start_milvus_lite(Path(tempfile.mkdtemp(prefix="mmrecall-test-milvus-")))
        atexit.register(process.kill)
        _milvus_servers.append(url)
    return _milvus_servers[0]


def make_settings(home: Path, redis_url: str, **overrides) -> Settings:
    if VECTOR_STORE == "milvus":  # an alias of its own: tests sharing the server never meet
        overrides = {"vector_store": milvus_url(), "vector_store_alias": f"t_{uuid.uuid4().hex[:12]}", **overrides}
    elif VECTOR_STORE != "faiss":
        raise ValueError(f"MMRECALL_TEST_VECTOR_STORE is faiss or milvus, not {VECTOR_STORE!r}")
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
        return self.reindex()

    def reindex(self) -> dict:
        """A reindex through the API, once the API serves its snapshot; the job."""
        job = self.wait_job(self.http.post("/v1/reindex").json()["job_id"])
        assert job["state"] == "succeeded", job
        deadline = time.time() + 10
        while self.http.get("/healthz").json()["snapshot"] != job["result"]["snapshot"]:
            assert time.time() < deadline
            time.sleep(0.1)
        return job


@contextmanager
def running_service(settings: Settings) -> Iterator[Service]:
    """A real Celery worker process and the API over HTTP on `settings`, sharing one catalogue and one queue."""
    worker = start_worker(settings, concurrency=1, pool="solo", log_path=str(settings.home / "worker.log"))
    try:
        wait_for_workers(settings, timeout=90)
        with ApiServer(settings) as api:
            service = Service(settings, api)
            yield service
            service.http.close()
    finally:
        worker.terminate()
        worker.wait(30)
        redis.Redis.from_url(settings.redis_url).delete(settings.queue)
