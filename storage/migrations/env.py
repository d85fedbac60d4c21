"""Alembic's environment: migrations run on the connection `storage.migrations.upgrade` hands over."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# batch mode: SQLite alters a table by copying it, which Alembic's batch operations do
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
