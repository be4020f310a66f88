"""Fault tolerance: consumer instances, infrastructure retries with backoff, attempt history, output limit, run user.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from private_api.orm import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("max_output_size", sa.String(32), nullable=False, server_default="50g"))
        batch.add_column(sa.Column("user", sa.String(64), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("consumer_name", sa.String(256), nullable=True))
        batch.add_column(sa.Column("infra_retries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("not_before", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("history", sa.Text(), nullable=False, server_default="[]"))
    op.create_table(
        "consumers",
        sa.Column("instance_id", sa.String(256), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("queues", sa.Text(), nullable=False),
        sa.Column("gpu_device", sa.String(128), nullable=True),
        sa.Column("gpu_usable", sa.Boolean(), nullable=True),
        sa.Column("gpu_reason", sa.Text(), nullable=True),
        sa.Column("free_disk_bytes", sa.BigInteger(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_consumers_last_seen", "consumers", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_consumers_last_seen", table_name="consumers")
    op.drop_table("consumers")
    with op.batch_alter_table("tasks") as batch:
        for column in ("history", "not_before", "infra_retries", "consumer_name"):
            batch.drop_column(column)
    with op.batch_alter_table("models") as batch:
        batch.drop_column("user")
        batch.drop_column("max_output_size")
