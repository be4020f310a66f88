"""Fixtures of the fault suite: the private API fixtures (both databases, the real broker) and the shared servers.

tests/conftest.py (docker engine, RabbitMQ, PostgreSQL, busybox) applies here by itself; the private API's fixtures
are re-exported so fault tests get a fresh app on SQLite and on PostgreSQL.
"""

from tests.private_api.conftest import api, db_url, live, purge_queues, settings

__all__ = ["api", "db_url", "live", "purge_queues", "settings"]
