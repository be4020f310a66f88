"""Fixtures of the fault tests: the private API's own (a fresh app per test, SQLite and PostgreSQL, the real broker)."""

from tests.private_api.conftest import api, db_url, live, purge_queues, settings  # noqa: F401
