"""A shared service and what runs: model versions, API keys, audit, idempotency keys, task phases, progress,
provenance, retention and webhooks.

Revision ID: 0003
Revises: 0002
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from private_api.orm import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TASK_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("model_version", sa.Integer(), nullable=True),
    sa.Column("phase", sa.String(16), nullable=True),
    sa.Column("phase_started_at", UTCDateTime(), nullable=True),
    sa.Column("progress", sa.Float(), nullable=True),
    sa.Column("progress_message", sa.String(256), nullable=True),
    sa.Column("provenance", sa.Text(), nullable=True),
    sa.Column("input_removed_at", UTCDateTime(), nullable=True),
    sa.Column("output_expired_at", UTCDateTime(), nullable=True),
    sa.Column("callback_url", sa.Text(), nullable=True),
    sa.Column("webhook_state", sa.String(16), nullable=True),
    sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("webhook_next_at", UTCDateTime(), nullable=True),
    sa.Column("webhook_last_error", sa.Text(), nullable=True),
    sa.Column("webhook_delivered_at", UTCDateTime(), nullable=True),
]
# The fields a version copies from its model.
_VERSION_FIELDS = (
    "container_tag, description, use_gpu, timeout, mem_limit, shm_size, cpus, network, max_output_size, "
    '"user", zip_sha256, zip_size'
)


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("tasks") as batch:
        for column in _TASK_COLUMNS:
            batch.add_column(column)
        batch.create_index("ix_tasks_owner_status", ["owner", "status"])
        batch.create_index("ix_tasks_webhook_next_at", ["webhook_next_at"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("container_tag", sa.String(512), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("use_gpu", sa.Boolean(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("mem_limit", sa.String(32), nullable=False),
        sa.Column("shm_size", sa.String(32), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("network", sa.Boolean(), nullable=False),
        sa.Column("max_output_size", sa.String(32), nullable=False),
        sa.Column("user", sa.String(64), nullable=True),
        sa.Column("zip_sha256", sa.String(64), nullable=True),
        sa.Column("zip_size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
    )
    op.create_index("ix_model_versions_model_id", "model_versions", ["model_id"])
    # Every existing model's state becomes its version 1; its tasks ran (or will run) that.
    op.execute(
        f"INSERT INTO model_versions (model_id, version, {_VERSION_FIELDS}, created_at) "
        f"SELECT id, 1, {_VERSION_FIELDS}, updated_at FROM models"
    )
    op.execute("UPDATE tasks SET model_version = 1 WHERE model_id IS NOT NULL")
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("max_queued_tasks", sa.Integer(), nullable=True),
        sa.Column("max_running_tasks", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=True),
    )
    op.create_index("ix_api_keys_secret_sha256", "api_keys", ["secret_sha256"], unique=True)
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=True),
        sa.Column("key_name", sa.String(128), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    for name in ("at", "key_id", "action"):
        op.create_index(f"ix_audit_{name}", "audit", [name])
    op.create_table(
        "idempotency",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("task_uid", sa.String(64), nullable=False),
        sa.Column("model_hid", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),
    )
    op.create_index("ix_idempotency_created_at", "idempotency", ["created_at"])


def downgrade() -> None:
    for table in ("idempotency", "audit", "api_keys", "model_versions"):
        op.drop_table(table)
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_webhook_next_at")
        batch.drop_index("ix_tasks_owner_status")
        for column in reversed(_TASK_COLUMNS):
            batch.drop_column(column.name)
    with op.batch_alter_table("models") as batch:
        batch.drop_column("version")
