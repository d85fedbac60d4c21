"""Alembic migrations on SQLite and PostgreSQL: a database at the baseline, and one made before migrations
existed, upgrade to the head losing no row; the migrated schema is exactly the models'; the scripts' head is
the one the code checks for."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from mmrecall.storage import migrations
from mmrecall.storage.db import Base, get_engine
from mmrecall.storage.title_search import FTS_TABLE

ROWS = {  # a row in every table, written at the baseline
    "items": "INSERT INTO items (id, title, tags, status, updated_at) "
    "VALUES ('i1', 'a title', '[\"a/b\"]', 'ready', 1)",
    "item_vectors": "INSERT INTO item_vectors (item_id, encoder, version, dim, vector, created_at) "
    "VALUES ('i1', 'e', 'e@1', 2, :blob, 5)",
    "interactions": "INSERT INTO interactions (user_id, item_id, timestamp, event, weight) "
    "VALUES ('u', 'i1', 3, 'click', 1)",
    "jobs": "INSERT INTO jobs (id, kind, state, done, total, params, created_at, updated_at) "
    "VALUES ('j1', 'reindex', 'succeeded', 1, 1, '{}', 1, 2)",
    "encoder_state": "INSERT INTO encoder_state (key, spec, updated_at) VALUES ('active', 'text-minilm', 1)",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("fresh_postgres_url")


def baseline_with_rows(url: str, *, drop_version_table: bool = False) -> None:
    engine = create_engine(url)
    migrations.upgrade(engine, to=migrations.BASELINE)
    with engine.begin() as conn:
        for statement in ROWS.values():
            conn.execute(text(statement), {"blob": b"\x00" * 8} if ":blob" in statement else {})
        if drop_version_table:  # as a database made by create_all before migrations existed
            conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()


def not_title_search(name: str | None, _kind: str, _parents: dict) -> bool:
    """The title search's own objects (storage.title_search, made beside the migrations) are not models."""
    return not (name or "").startswith(FTS_TABLE) and name != "ix_items_title_fts"


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in ROWS}
    engine.dispose()
    return found


@pytest.mark.parametrize("made_before_migrations", [False, True])
def test_upgrade_from_the_baseline_loses_no_row(database_url: str, made_before_migrations: bool) -> None:
    baseline_with_rows(database_url, drop_version_table=made_before_migrations)
    assert migrations.current_revision(create_engine(database_url))[0] == (
        None if made_before_migrations else migrations.BASELINE
    )
    engine = get_engine(database_url)  # what every process does on start: upgrade to the head
    assert migrations.current_revision(engine) == (migrations.HEAD, True)
    assert counts(database_url) == dict.fromkeys(ROWS, 1)
    indexes = {index["name"] for index in inspect(engine).get_indexes("item_vectors")}
    assert "ix_item_vectors_created_at" in indexes  # the head's change
    with engine.connect() as conn:  # the models match the migrated schema: no change left unmigrated
        context = MigrationContext.configure(conn, opts={"include_name": not_title_search})
        assert compare_metadata(context, Base.metadata) == []
    assert not migrations.upgrade(engine)  # at the head: nothing runs
    engine.dispose()


def test_the_code_knows_the_scripts_head() -> None:
    scripts = ScriptDirectory.from_config(migrations.config())
    assert scripts.get_current_head() == migrations.HEAD
    assert [s.revision for s in scripts.walk_revisions()][-1] == migrations.BASELINE
