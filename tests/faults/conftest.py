"""Fixtures of the fault suite: each test injects one real fault (docker engine, RabbitMQ, PostgreSQL, the private API).

tests/conftest.py (docker engine, RabbitMQ, PostgreSQL, busybox) applies here by itself; the private API's fixtures
(a fresh app on SQLite and on PostgreSQL) and the consumer's (a real private API process, workers) are re-exported.
"""

from __future__ import annotations

from tests.consumer.conftest import (
    amqp_url,
    consumer_docker,
    consumer_id,
    model_images,
    private_api,
    private_api_env,
    start_worker,
)
from tests.private_api.conftest import api, db_url, live, purge_queues, settings

__all__ = [
    "amqp_url",
    "api",
    "consumer_docker",
    "consumer_id",
    "db_url",
    "live",
    "model_images",
    "private_api",
    "private_api_env",
    "purge_queues",
    "settings",
    "start_worker",
]
