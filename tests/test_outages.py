"""Dependencies going away while the service runs, on the real services: PostgreSQL stopped (a server of
the test's own), Redis restarted empty, the disk refusing a snapshot's files. Reads keep being served from
the loaded snapshot, writes answer 503 with the reason and Retry-After, workers resume, /readyz names
what is missing, and nothing half-written is ever served."""

from __future__ import annotations

import multiprocessing
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mmrecall.core.settings import Settings
from mmrecall.pipeline.queue import workers_alive
from mmrecall.pipeline.reindex import reindex
from mmrecall.pipeline.runner import PrivatePostgres, PrivateRedis, postgres_bin_dir
from mmrecall.storage import catalogue, snapshots
from mmrecall.storage.db import Interaction, session_scope
from tests.helpers import make_settings, running_service

pytestmark = pytest.mark.service

WORDS = ("red", "green", "blue", "gold")
ITEMS = [{"id": f"i{k}", "title": f"{WORDS[k % 4]} item {k}", "tags": [f"t{k % 4}/s"]} for k in range(16)]
HISTORY = [{"user_id": "u1", "item_id": f"i{k}", "timestamp": float(k), "event": "click"} for k in (0, 4, 8)]


@pytest.fixture
def postgres() -> PrivatePostgres:
    if postgres_bin_dir() is None:
        pytest.skip("the PostgreSQL server programs are not installed")
    server = PrivatePostgres()
    try:
        server.init()
    except (subprocess.SubprocessError, OSError) as exc:
        server.destroy()
        pytest.skip(f"a private PostgreSQL cannot run here: {exc}")
    yield server
    server.destroy()


def until(condition, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_database_down_reads_serve_writes_answer_503_and_everything_resumes(
    postgres: PrivatePostgres, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path / "home", redis_url, database_url=postgres.url, reconcile_after_s=2.0, reconcile_every_s=0.5
    )
    with running_service(settings) as service:
        service.serve_catalogue(ITEMS, HISTORY)
        http = service.http
        personal = http.post("/v1/recall", json={"user_id": "u1", "k": 5}).json()
        assert personal.get("degraded") is None and personal["history_used"] == 3
        # an item newer than the snapshot: its title and tags live in the database only
        assert http.post("/v1/items", json={"items": [{"id": "fresh", "title": "a fresh red item"}]}).status_code == 202
        assert service.wait_items(["fresh"])["fresh"]["status"] == "ready"
        assert until(lambda: http.get("/v1/similar/fresh").status_code == 200)

        postgres.stop()
        try:
            similar = http.get("/v1/similar/i1", params={"k": 5})
            assert similar.status_code == 200 and len(similar.json()["results"]) == 5
            recall = http.post("/v1/recall", json={"history": ["i0", "i4"], "k": 5})
            assert recall.status_code == 200 and len(recall.json()["results"]) == 5
            # a stored user's history cannot be read: served from the snapshot's non-personalised channels
            user = http.post("/v1/recall", json={"user_id": "u1", "k": 5})
            assert user.status_code == 200, user.text
            assert "database does not answer" in user.json()["degraded"] and user.json()["fallback"] is True
            assert {c for r in user.json()["results"] for c in r["channels"]} <= {"popular", "trending", "latest"}

            for method, path, body in (
                ("POST", "/v1/interactions", {"interactions": [{"user_id": "u2", "item_id": "i1", "timestamp": 9}]}),
                ("POST", "/v1/items", {"items": [{"id": "late", "title": "a late item"}]}),
                ("POST", "/v1/reindex", None),
            ):
                answer = http.request(method, path, json=body)
                assert answer.status_code == 503, (path, answer.status_code, answer.text)
                assert "database does not answer" in answer.json()["detail"], answer.text
                assert answer.headers["retry-after"] == "5"
            ready = http.get("/readyz")
            assert ready.status_code == 503 and set(ready.json()["problems"]) == {"database"}
            assert http.get("/healthz").status_code == 200
            time.sleep(2.0)  # the worker's reconcile sweeps meet the outage: it must survive them
        finally:
            postgres.start()

        assert until(lambda: http.get("/readyz").status_code == 200)
        assert http.post("/v1/recall", json={"user_id": "u1", "k": 5}).json().get("degraded") is None
        added = http.post(
            "/v1/interactions", json={"interactions": [{"user_id": "u2", "item_id": "i1", "timestamp": 9}]}
        )
        assert added.status_code == 202 and added.json()["count"] == 1  # the refused one was never stored
        late = http.post("/v1/items", json={"items": [{"id": "late", "title": "a late gold item"}]})
        assert late.status_code == 202
        assert service.wait_items(["late"])["late"]["status"] == "ready"  # the worker resumed
        with session_scope(settings.resolved_database_url) as session:
            stored = session.scalar(select(func.count()).select_from(Interaction))
            assert stored == len(HISTORY) + 1  # nothing lost, nothing doubled


def test_redis_restarted_empty_jobs_are_accepted_and_run_again(tmp_path: Path) -> None:
    broker = PrivateRedis().start()
    try:
        settings = make_settings(tmp_path / "home", broker.url, reconcile_after_s=2.0, reconcile_every_s=0.5)
        with running_service(settings) as service:
            service.serve_catalogue(ITEMS, HISTORY)
            broker.restart_empty()
            # the API's pooled broker connections died with it: the next job is still queued, not a 500
            assert until(lambda: workers_alive(settings) >= 1, timeout=60)
            job = service.http.post("/v1/reindex")
            assert job.status_code == 202, job.text
            assert service.wait_job(job.json()["job_id"])["state"] == "succeeded"
    finally:
        broker.kill()


def _reindex_with_a_full_disk(settings_json: str, job_id: str, limit: int) -> None:
    """In a child: files may not grow past `limit` bytes (what a full disk does to a writer), then reindex."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    reindex(Settings.model_validate_json(settings_json), job_id)


def test_a_snapshot_that_cannot_be_written_is_never_served_and_is_removed(
    postgres: PrivatePostgres, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "home", redis_url, database_url=postgres.url)
    with running_service(settings) as service:
        first = service.serve_catalogue(ITEMS, HISTORY)["result"]["snapshot"]
        with session_scope(settings.resolved_database_url) as session:
            job_id = catalogue.create_job(session, "reindex").id
        child = multiprocessing.get_context("spawn").Process(
            target=_reindex_with_a_full_disk, args=(settings.model_dump_json(), job_id, 1024)
        )
        child.start()
        child.join(120)
        with session_scope(settings.resolved_database_url) as session:
            job = catalogue.get_job(session, job_id)
            assert job.state == "failed" and job.error.startswith("OSError"), (job.state, job.error)
        assert snapshots.current_snapshot(settings.snapshots_dir).name == first  # CURRENT never moved
        assert sorted(p.name for p in settings.snapshots_dir.iterdir() if p.is_dir()) == [first]  # no half
        assert service.http.get("/healthz").json()["snapshot"] == first
        similar = service.http.get("/v1/similar/i1", params={"k": 5})
        assert similar.status_code == 200 and len(similar.json()["results"]) == 5
        assert service.reindex()["state"] == "succeeded"  # room again: the next reindex serves
