"""Fault: two consumers configured with one CONSUMER_ID (two CPU consumers on one host get the same default name).

Each consumer process has its own instance id, so neither can take over the other's running task; a duplicate
delivery of a running task is acknowledged and dropped. Every model container is started exactly once (counted from
the engine's own `docker events`), every task finishes at attempt 1.
"""

from __future__ import annotations

import collections
import time

import pika
import pytest

from common.messages import CPU_QUEUE, encode
from job_consumer.sandbox import SCOPE_LABEL, TASK_LABEL, scope_of
from tests.consumer.conftest import PrivateApi, queue_length, start_consumer_process, stop_process, wait_until
from tests.consumer.helpers import zip_bytes

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

TASKS = 20


def _publish_again(amqp_url: str, uids: list[str]) -> None:
    """Publish every uid once more: duplicate deliveries, as after a broker redelivery or a republish."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for uid in uids:
        channel.basic_publish("", CPU_QUEUE, encode(uid), pika.BasicProperties(delivery_mode=2))
    connection.close()


def test_two_consumers_with_one_id_run_each_task_once(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker, tmp_path, consumer_id
):
    """2 consumers x 1 CONSUMER_ID x 20 one-second tasks (each also delivered twice): 20 container starts."""
    since = int(time.time()) - 1
    model = private_api.add_model(model_images["sleep1"])
    uids = [private_api.submit(model["human_readable_id"], zip_bytes({"i": str(i).encode()})) for i in range(TASKS)]
    _publish_again(amqp_url, uids)
    consumers = [
        start_consumer_process(private_api, amqp_url, consumer_id, tmp_path, log_name=f"consumer-{n}.log")
        for n in range(2)
    ]
    try:
        results = [private_api.wait(uid, {"finished", "failed"}, timeout=180) for uid in uids]
        wait_until(lambda: queue_length(amqp_url, CPU_QUEUE) == 0, 30, "the duplicate deliveries to be dropped")
    finally:
        codes = [stop_process(process) for process, _ in consumers]
    until = int(time.time()) + 1
    assert codes == [0, 0]
    assert all(r["status"] == "finished" and r["attempt"] == 1 for r in results), results
    instances = {r["consumer_id"] for r in results}
    assert len(instances) == 2 and all(i.startswith(f"{consumer_id}-") for i in instances), instances
    starts = collections.Counter(
        event["Actor"]["Attributes"].get(TASK_LABEL)
        for event in consumer_docker.events(
            since=since,
            until=until,
            decode=True,
            filters={"type": "container", "event": "start", "label": f"{SCOPE_LABEL}={scope_of(private_api.url)}"},
        )
    )
    assert starts == dict.fromkeys(uids, 1), starts
    for _process, log_path in consumers:
        assert " ERROR " not in log_path.read_text()
