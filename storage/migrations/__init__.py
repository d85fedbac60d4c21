"""Schema migrations with Alembic. The first revision is the schema as it stood when migrations began (the
baseline); every later change to `storage.db`'s tables is a revision here, and tests/test_migrations.py
checks that the models and the migrated schema agree.

Every process that opens a database brings it to the head revision (`upgrade`): a new database is created
by the migrations; one made before them holds the baseline (with the nullable columns that were then
added in place), so it is stamped at the baseline and upgraded from there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect

BASELINE = "0001"
HEAD = "0002"  # the newest revision in versions/ (checked against the scripts by the tests)


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> tuple[str | None, bool]:
    """(the database's revision, whether it holds tables at all)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision(), "items" in inspect(conn).get_table_names()


def upgrade(engine: Engine, *, before_stamp: Callable[[], object] = lambda: None, to: str = "head") -> bool:
    """Bring the database to `to` (default: the head); True when anything ran. before_stamp: run on a
    database made before migrations, before it is stamped at the baseline (the old in-place column adds)."""
    revision, has_tables = current_revision(engine)
    if revision == (HEAD if to == "head" else to):
        return False
    legacy = revision is None and has_tables
    if legacy:
        before_stamp()
    with engine.begin() as conn:
        cfg = config(conn)
        if legacy:
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, to)
    return True
