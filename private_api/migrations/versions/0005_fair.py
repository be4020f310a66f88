"""Fair order across owners: an index to find an owner's last start quickly, and the message a claim came with.

Revision ID: 0005_fair
Revises: 0004_retention
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_fair"
down_revision = "0004_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("claimed_for", sa.String(64), nullable=True))
        batch.create_index("ix_tasks_owner_started", ["owner", "started_at"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_owner_started")
        batch.drop_column("claimed_for")
