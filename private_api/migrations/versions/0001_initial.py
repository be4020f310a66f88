"""Initial schema: models and tasks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from private_api.orm import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("human_readable_id", sa.String(128), nullable=False),
        sa.Column("container_tag", sa.String(512), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("use_gpu", sa.Boolean(), nullable=False),
        sa.Column("zip_sha256", sa.String(64), nullable=True),
        sa.Column("zip_size", sa.BigInteger(), nullable=True),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("mem_limit", sa.String(32), nullable=False),
        sa.Column("shm_size", sa.String(32), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("network", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_models_human_readable_id", "models", ["human_readable_id"], unique=True)
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="SET NULL"), nullable=True),
        sa.Column("model_hid", sa.String(128), nullable=False),
        sa.Column("use_gpu", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("consumer_id", sa.String(256), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("input_size", sa.BigInteger(), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("output_size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_tasks_uid", "tasks", ["uid"], unique=True)
    op.create_index("ix_tasks_model_id", "tasks", ["model_id"])
    op.create_index("ix_tasks_status_id", "tasks", ["status", "id"])
    op.create_index("ix_tasks_unpublished", "tasks", ["published_at", "status"])
    op.create_index("ix_tasks_owner_id", "tasks", ["owner", "id"])


def downgrade() -> None:
    op.drop_table("tasks")
    op.drop_table("models")
