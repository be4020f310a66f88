"""Fixtures of the fault suite: each test injects one real fault (docker engine, RabbitMQ, the real private API)."""

from __future__ import annotations

from tests.consumer.conftest import (  # noqa: F401 - fixtures re-exported for tests/faults
    amqp_url,
    consumer_docker,
    consumer_id,
    model_images,
    private_api,
    private_api_env,
    start_worker,
)
