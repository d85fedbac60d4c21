"""An index on item_vectors.created_at: /metrics counts the vectors written in the last minute (the
workers' encode throughput) at every scrape, which was a full scan at 1M items.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("item_vectors") as batch_op:
        batch_op.create_index("ix_item_vectors_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("item_vectors") as batch_op:
        batch_op.drop_index("ix_item_vectors_created_at")
