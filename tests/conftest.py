"""Shared fixtures: real Redis, a real Celery worker process, a real API on loopback, real databases.
Helpers that are not fixtures live in tests/helpers.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy

from mmrecall.core.settings import Settings
from tests.helpers import POSTGRES_URL, REDIS_URL, Service, make_settings, running_service


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:  # .ci/run starts Redis; a developer machine may lack it
        pytest.fail(f"Redis does not answer at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return make_settings(tmp_path / "home", redis_url)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    """A real Celery worker process and the API over HTTP, sharing one catalogue and one queue."""
    home = tmp_path_factory.mktemp("service")
    with running_service(make_settings(home, redis_url)) as service:
        yield service


def _postgres_schema() -> Iterator[str]:
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL, shared by the session; skipped cleanly where none answers."""
    yield from _postgres_schema()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A schema of the test's own: for tests that must not see (or leave) other tests' rows."""
    yield from _postgres_schema()
