"""Retention: indexes that let the sweeper find the tasks whose input or output is due without reading every task.

Revision ID: 0004_retention
Revises: 0003
"""

from alembic import op

revision = "0004_retention"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_input_due", "tasks", ["input_removed_at", "finished_at"])
    op.create_index("ix_tasks_output_due", "tasks", ["output_expired_at", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_output_due", table_name="tasks")
    op.drop_index("ix_tasks_input_due", table_name="tasks")
