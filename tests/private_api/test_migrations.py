"""The Alembic migrations build exactly the schema the code expects."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from private_api.db import make_engine, migrate
from private_api.orm import Base


def test_migrations_match_the_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # a second start finds nothing to do
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
        assert {"models", "tasks", "alembic_version"} <= set(inspect(connection).get_table_names())
        indexes = {ix["name"] for ix in inspect(connection).get_indexes("tasks")}
        assert {"ix_tasks_uid", "ix_tasks_status_id", "ix_tasks_unpublished"} <= indexes
    engine.dispose()
