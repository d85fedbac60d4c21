"""Shared fixtures: real Redis, a real Celery worker process, a real API on loopback, real databases."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from mmrecall.runner import free_port, wait_for_api
from mmrecall.settings import Settings

SHARED_DATA = Path(os.environ.get("MMRECALL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REDIS_URL = os.environ.get("MMRECALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("MMRECALL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def shared_dataset(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:  # .ci/run starts Redis; a developer machine may lack it
        pytest.fail(f"Redis does not answer at {REDIS_URL}: {exc}")
    return REDIS_URL


def make_settings(home: Path, redis_url: str, **overrides) -> Settings:
    media = home / "media"
    media.mkdir(parents=True, exist_ok=True)
    values = dict(
        home=home,
        database_url=f"sqlite:///{home / 'catalogue.db'}",
        redis_url=redis_url,
        queue=f"mmrecall-test-{uuid.uuid4().hex[:8]}",  # isolates this run from any other on the broker
        encoder="tiny-test",
        media_roots=[media],
        encode_batch_size=8,
        refresh_interval_s=0.1,
    )
    values.update(overrides)
    settings = Settings(**values)
    settings.ensure_dirs()
    return settings


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return make_settings(tmp_path / "home", redis_url)


class ApiServer:
    """The real app under uvicorn on a loopback port, in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from api.app import create_app

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


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    """A real Celery worker process and the API over HTTP, sharing one catalogue and one queue."""
    from mmrecall.runner import start_worker, wait_for_workers

    home = tmp_path_factory.mktemp("service")
    settings = make_settings(home, redis_url)
    worker = start_worker(settings, concurrency=1, pool="solo", log_path=str(home / "worker.log"))
    try:
        wait_for_workers(settings, timeout=90)
        with ApiServer(settings) as api:
            service = Service(settings, api)
            yield service
            service.http.close()
    finally:
        worker.terminate()
        worker.wait(30)
        redis.Redis.from_url(redis_url).delete(settings.queue)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL; skipped cleanly where none answers."""
    import sqlalchemy

    schema = f"mmrecall_test_{uuid.uuid4().hex[:8]}"
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not available at {POSTGRES_URL}: {exc}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()
