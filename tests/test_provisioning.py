"""The shared fixtures give a working docker engine, broker and database, and the helpers refuse bad input."""

from __future__ import annotations

import uuid

import docker
import pika
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import TEST_LABEL, fixture_container, fresh_postgres_database, normalise_postgres_url


def _engine(url: str) -> sa.Engine:
    """A pool-less engine for one test."""
    return sa.create_engine(url, poolclass=NullPool)


def test_docker_client_answers(docker_client: docker.DockerClient) -> None:
    """The engine answers a ping and reports an API version."""
    assert docker_client.ping() is True
    assert docker_client.version()["ApiVersion"]


def test_broker_round_trip_of_one_persistent_message(rabbitmq_url: str) -> None:
    """A message published with confirms comes back unchanged and persistent, then the queue is empty."""
    queue = f"test.provisioning.{uuid.uuid4().hex}"
    body = f"hello {uuid.uuid4().hex}".encode()
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue=queue, durable=True)
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
            mandatory=True,
        )
        method, properties, received = channel.basic_get(queue=queue, auto_ack=False)
        assert method is not None, "the published message did not arrive"
        assert received == body
        assert properties.delivery_mode == 2
        channel.basic_ack(method.delivery_tag)
        assert channel.basic_get(queue=queue, auto_ack=True) == (None, None, None)
        channel.queue_delete(queue=queue)
    finally:
        connection.close()


def test_database_round_trip_in_a_fresh_database(postgres_url: str) -> None:
    """A fresh database takes a table, an insert and a select, and is not the server's default database."""
    url = fresh_postgres_database(postgres_url)
    assert make_url(url).database != make_url(postgres_url).database
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)"))
            connection.execute(sa.text("INSERT INTO items (name) VALUES ('alpha'), ('beta')"))
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT name FROM items ORDER BY id")).scalars().all()
    finally:
        engine.dispose()
    assert rows == ["alpha", "beta"]


def test_fresh_databases_share_no_tables(postgres_url: str, fresh_postgres_database: object) -> None:
    """Two fresh databases are distinct and empty: a table made in one does not exist in the other."""
    assert callable(fresh_postgres_database)
    first, second = fresh_postgres_database(postgres_url), fresh_postgres_database(postgres_url)
    assert first != second
    with _engine(first).begin() as connection:
        connection.execute(sa.text("CREATE TABLE only_here (id int)"))
    engine = _engine(second)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_busybox_image_has_the_applets_test_models_use(docker_client: docker.DockerClient, busybox_image: str) -> None:
    """sh, cp, cat, dd and sleep work in the busybox image."""
    script = "echo payload > /tmp/a && cp /tmp/a /tmp/b && cat /tmp/b && dd if=/dev/zero bs=1k count=2 | wc -c"
    output = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", f"{script} && sleep 0 && which wget sh"],
        remove=True,
        network_disabled=True,
        labels={TEST_LABEL: "1"},
        name=f"inference-server-test-busybox-{uuid.uuid4().hex[:10]}",
    ).decode()
    lines = output.split()
    assert lines[:2] == ["payload", "2048"]
    assert [line.rsplit("/", 1)[-1] for line in lines[2:]] == ["wget", "sh"]


@pytest.mark.parametrize(
    ("fixture", "command"),
    [
        ("rabbitmq_url", ["rabbitmq-diagnostics", "-q", "ping"]),
        ("postgres_url", ["pg_isready", "-U", "inference", "-d", "inference"]),
    ],
)
def test_fixture_containers_are_labelled_and_pass_their_healthcheck(
    request: pytest.FixtureRequest, fixture: str, command: list[str]
) -> None:
    """A container started by a fixture carries the test label and passes the compose file's healthcheck."""
    request.getfixturevalue(fixture)
    container = fixture_container(fixture)
    if container is None:
        pytest.skip(f"{fixture} uses an existing server (RABBITMQ_URL / DATABASE_URL), not a container")
    container.reload()
    assert container.labels[TEST_LABEL] == "1"
    exit_code, output = container.exec_run(command)
    assert exit_code == 0, output.decode(errors="replace")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgres://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        ("postgresql+psycopg://u:p%40x@h/d", "postgresql+psycopg://u:p%40x@h/d"),
        ("sqlite:////data/db.sqlite3", None),
        ("", None),
        ("not a url", None),
    ],
)
def test_normalise_postgres_url(url: str, expected: str | None) -> None:
    """Only PostgreSQL URLs are taken from DATABASE_URL, always with the psycopg driver."""
    assert normalise_postgres_url(url) == expected


def test_normalise_postgres_url_refuses_another_driver() -> None:
    """A PostgreSQL URL with a driver the project does not install is a usage error, not silently rewritten."""
    with pytest.raises(ValueError, match="psycopg"):
        normalise_postgres_url("postgresql+asyncpg://u:p@h/d")
