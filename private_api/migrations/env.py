"""Alembic environment: runs on the connection the private API hands it (see db.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from private_api.orm import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # `alembic -x url=... upgrade head` from the command line.
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database as: alembic -x url=<DATABASE_URL> upgrade head")
    with create_engine(url).begin() as own_connection:
        context.configure(connection=own_connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
