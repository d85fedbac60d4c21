"""Catalogue operations against SQLite and, when it answers, PostgreSQL."""

import multiprocessing
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy

from mmrecall.core.interchange import InteractionRecord, ItemRecord
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    return request.getfixturevalue("postgres_url")


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_items_status_and_vectors(db_url: str) -> None:
    with session_scope(db_url) as s:
        ids = catalogue.upsert_items(
            s, [ItemRecord(id="a", title="A"), ItemRecord(id="b"), ItemRecord(id="a", title="A2")]
        )
    assert ids == ["a", "b"]
    with session_scope(db_url) as s:
        assert catalogue.get_item(s, "a").title == "A2"  # last record of an id wins
        assert catalogue.count_by_status(s) == {"pending": 2}
        catalogue.set_status(s, ["b"], "failed", "image not found: x.png")
    vectors = _unit(2, 8, 0)
    with session_scope(db_url) as s:
        catalogue.store_vectors(s, ["a"], vectors[:1], encoder="e", version="e@1")
    with session_scope(db_url) as s:
        assert catalogue.count_by_status(s) == {"ready": 1, "failed": 1}
        assert catalogue.get_item(s, "b").error == "image not found: x.png"
        first_rows = catalogue.vector_rows_after(s, "e@1", 0)
        # a re-encode replaces the vector under a new row id, so feed readers see it
        catalogue.store_vectors(s, ["a"], vectors[1:], encoder="e", version="e@1")
    with session_scope(db_url) as s:
        rows = catalogue.vector_rows_after(s, "e@1", 0)
        assert len(rows) == 1 and rows[0] > first_rows[0]
        ids, matrix = catalogue.vectors_by_rows(s, rows)
        assert ids == ["a"] and np.allclose(matrix[0], vectors[1])
        assert catalogue.count_vectors(s, "e@1") == 1 and catalogue.count_vectors(s, "other") == 0


def test_iter_vectors_in_chunks(db_url: str) -> None:
    vectors = _unit(25, 4, 1)
    ids = [f"i{n:02d}" for n in range(25)]
    with session_scope(db_url) as s:
        catalogue.upsert_items(s, [ItemRecord(id=i) for i in ids])
        catalogue.store_vectors(s, ids, vectors, encoder="e", version="v")
    with session_scope(db_url) as s:
        chunks = list(catalogue.iter_vectors(s, "v", chunk=10))
    assert [len(c[0]) for c in chunks] == [10, 10, 5]
    assert sum((c[0] for c in chunks), []) == ids
    assert np.allclose(np.concatenate([c[1] for c in chunks]), vectors)


def test_interactions_are_not_doubled_by_reingest(db_url: str) -> None:
    rows = [
        InteractionRecord(user_id="u", item_id="a", timestamp=1, event="click"),
        InteractionRecord(user_id="u", item_id="a", timestamp=2),
    ]
    with session_scope(db_url) as s:
        assert catalogue.add_interactions(s, rows) == 2
    with session_scope(db_url) as s:
        assert catalogue.add_interactions(s, rows) == 0


def test_jobs(db_url: str) -> None:
    with session_scope(db_url) as s:
        job = catalogue.create_job(s, "reindex", {"x": 1})
    with session_scope(db_url) as s:
        catalogue.update_job(s, job.id, state="running", done=3, total=10)
    with session_scope(db_url) as s:
        stored = catalogue.get_job(s, job.id)
        assert (stored.state, stored.done, stored.total, stored.params) == ("running", 3, 10, {"x": 1})
        assert catalogue.get_job(s, "nope") is None


def _open_at(url: str, at: float) -> None:
    time.sleep(max(0.0, at - time.time()))
    from mmrecall.storage.db import get_engine

    get_engine(url).dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_processes_starting_together_on_a_new_database_all_get_the_schema(backend: str, tmp_path: Path) -> None:
    """The API's processes (and workers) start together on a new database: each creates the schema if it
    is missing, and the ones that lose the race must not fail (a loser must not exit with
    'table items already exists')."""
    if backend == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path / 'new.db'}", None
    else:
        from tests.helpers import POSTGRES_URL

        schema = f"mmrecall_race_{uuid.uuid4().hex[:8]}"
        admin = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        try:
            with admin.begin() as conn:
                conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        except Exception as exc:
            pytest.skip(f"PostgreSQL not available: {exc}")
        url, cleanup = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", (admin, schema)
    try:
        at = time.time() + 3.0  # after every process has started
        processes = [multiprocessing.get_context("spawn").Process(target=_open_at, args=(url, at)) for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [p.exitcode for p in processes] == [0] * len(processes)
        with session_scope(url) as s:
            assert catalogue.upsert_items(s, [ItemRecord(id="a", title="A")]) == ["a"]
    finally:
        if cleanup is not None:
            admin, schema = cleanup
            with admin.begin() as conn:
                conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()


@pytest.mark.postgres
def test_two_reindexes_writing_cluster_ids_at_once_do_not_deadlock(fresh_postgres_url: str) -> None:
    """A training's activation and a scheduled reindex each write every item's cluster id, in their own
    (cluster) order; at once on PostgreSQL that deadlocked (bench soak). Written in id order, one waits."""
    import threading

    url = fresh_postgres_url
    ids = [f"i{n:05d}" for n in range(20_000)]
    with session_scope(url) as s:
        catalogue.upsert_items(s, [ItemRecord(id=i) for i in ids])
    rng = np.random.default_rng(0)
    start, errors = threading.Barrier(2), []

    def write(order: np.ndarray) -> None:
        try:
            with session_scope(url) as s:
                start.wait()
                catalogue.set_cluster_ids(s, [ids[i] for i in order], rng.integers(0, 50, len(order)))
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(rng.permutation(len(ids)),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    with session_scope(url) as s:
        assert s.scalar(sqlalchemy.text("select count(*) from items where cluster_id is not null")) == len(ids)
