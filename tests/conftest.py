"""Session fixtures every test suite shares: the docker engine, a RabbitMQ broker, a PostgreSQL server, busybox.

RabbitMQ and PostgreSQL come from `RABBITMQ_URL` / `DATABASE_URL` when those are set, else from containers started
here (images `RABBITMQ_IMAGE` / `POSTGRES_IMAGE`; CI points them at the stand-ins of `.ci/standin.env`). Containers
started here carry the label `inference-server.test=1`, listen on random ports of 127.0.0.1 only, and are removed
when the session ends. Tests of different suites share the servers but never a database: each takes its own from
`fresh_postgres_database`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator

import docker
import docker.errors
import pika
import pika.exceptions
import pytest
import sqlalchemy as sa
from docker.models.containers import Container
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

__all__ = [
    "TEST_LABEL",
    "fixture_container",
    "fresh_postgres_database",
    "normalise_postgres_url",
]

TEST_LABEL = "inference-server.test"
FIXTURE_LABEL = "inference-server.test.fixture"
DEFAULT_RABBITMQ_IMAGE = "rabbitmq:3-management"
DEFAULT_POSTGRES_IMAGE = "postgres:16"
DEFAULT_BUSYBOX_IMAGE = "busybox:stable"
START_TIMEOUT = 180.0
EXTERNAL_TIMEOUT = 30.0

# Containers this session started, by fixture name (for tests of the fixtures themselves).
_STARTED: dict[str, Container] = {}
# Databases created by fresh_postgres_database, by server URL (dropped at the end on servers we did not start).
_CREATED_DATABASES: dict[str, list[str]] = {}


def normalise_postgres_url(url: str) -> str | None:
    """`url` as a `postgresql+psycopg://` URL, None when it is no PostgreSQL URL; ValueError for another driver."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in {"postgresql", "postgres"}:
        return None
    if driver not in {"", "psycopg"}:
        raise ValueError(f"PostgreSQL URL with driver {driver!r}: the project uses postgresql+psycopg://")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _engine(url: str | URL) -> sa.Engine:
    """An engine without a pool (every test server connection is short-lived) that gives up quickly."""
    return sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})


def fresh_postgres_database(postgres_url: str) -> str:
    """Create a new empty database with a unique name on the server of `postgres_url`; its URL."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    engine = _engine(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    _CREATED_DATABASES.setdefault(postgres_url, []).append(name)
    return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


def _drop_created_databases(postgres_url: str) -> None:
    """Drop the databases fresh_postgres_database made on a server this session did not start."""
    names = _CREATED_DATABASES.pop(postgres_url, [])
    if not names:
        return
    engine = _engine(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def fixture_container(fixture: str) -> Container | None:
    """The container this session started for `fixture` ("rabbitmq_url", "postgres_url"), or None."""
    return _STARTED.get(fixture)


def _ensure_image(client: docker.DockerClient, image: str, variable: str) -> None:
    """Fail clearly unless `image` is present (pulling it when a registry is reachable)."""
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(image)
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"docker image {image!r} ({variable}) is not present and cannot be pulled ({exc}). "
            "Build the local stand-ins with `bash .ci/images/build.sh` and `source .ci/standin.env`, "
            f"or set {variable} to an image this engine has.",
            pytrace=False,
        )


def _start_container(
    client: docker.DockerClient, *, fixture: str, image: str, env: dict[str, str], port: int
) -> tuple[Container, int]:
    """Start a labelled container publishing `port` on a random port of 127.0.0.1; (container, host port)."""
    name = f"inference-server-test-{fixture.replace('_', '-')}-{uuid.uuid4().hex[:10]}"
    container = client.containers.run(
        image,
        detach=True,
        name=name,
        environment=env,
        ports={f"{port}/tcp": ("127.0.0.1", None)},
        labels={TEST_LABEL: "1", FIXTURE_LABEL: fixture},
    )
    _STARTED[fixture] = container
    try:
        container.reload()
        bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
        if not bindings:
            raise RuntimeError(f"container {name} publishes no host port for {port}/tcp")
        return container, int(bindings[0]["HostPort"])
    except BaseException:
        _remove_container(fixture)
        raise


def _remove_container(fixture: str) -> None:
    """Remove the container started for `fixture`, and its anonymous volumes."""
    container = _STARTED.pop(fixture, None)
    if container is None:
        return
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True, v=True)


def _logs_tail(container: Container, lines: int = 40) -> str:
    """The last lines of a container's output, for failure messages."""
    try:
        return container.logs(tail=lines).decode(errors="replace")
    except docker.errors.DockerException as exc:
        return f"(no logs: {exc})"


def _wait_until(
    ready: Callable[[], str | None], *, what: str, timeout: float, container: Container | None = None
) -> None:
    """Poll `ready` (None when ready, else why not) until it succeeds; fail with the last reason and the logs."""
    deadline = time.monotonic() + timeout
    reason = "not tried"
    while time.monotonic() < deadline:
        if container is not None:
            container.reload()
            if container.status in {"exited", "dead"}:
                pytest.fail(
                    f"{what}: the container exited (code {container.attrs['State']['ExitCode']}):\n"
                    f"{_logs_tail(container)}",
                    pytrace=False,
                )
        reason = ready() or ""
        if not reason:
            return
        time.sleep(0.5)
    logs = f"\ncontainer logs:\n{_logs_tail(container)}" if container is not None else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last error: {reason}{logs}", pytrace=False)


def _amqp_problem(url: str) -> str | None:
    """None when the broker at `url` accepts a login, else why not."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _postgres_problem(url: str) -> str | None:
    """None when the server at `url` accepts a connection and a query, else why not."""
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The docker engine of DOCKER_HOST (or the local socket); fails when no engine answers."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:  # requests' connection errors are OSErrors
        pytest.fail(f"no docker engine answers at {where}: {exc}. Start one (e.g. `dockerd &`).", pytrace=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def rabbitmq_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """An AMQP URL of a broker that accepts a login: RABBITMQ_URL, else a container started for this session."""
    external = os.environ.get("RABBITMQ_URL", "").strip()
    if external:
        _wait_until(lambda: _amqp_problem(external), what=f"RABBITMQ_URL ({external})", timeout=EXTERNAL_TIMEOUT)
        yield external
        return
    client: docker.DockerClient = request.getfixturevalue("docker_client")
    image = os.environ.get("RABBITMQ_IMAGE") or DEFAULT_RABBITMQ_IMAGE
    _ensure_image(client, image, "RABBITMQ_IMAGE")
    user, password = "inference", secrets.token_hex(16)
    container, port = _start_container(
        client,
        fixture="rabbitmq_url",
        image=image,
        env={"RABBITMQ_DEFAULT_USER": user, "RABBITMQ_DEFAULT_PASS": password, "RABBITMQ_DEFAULT_VHOST": "/"},
        port=5672,
    )
    try:
        url = f"amqp://{user}:{password}@127.0.0.1:{port}/%2F"
        _wait_until(
            lambda: _amqp_problem(url),
            what=f"RabbitMQ ({image}) to accept an AMQP login",
            timeout=START_TIMEOUT,
            container=container,
        )
        yield url
    finally:
        _remove_container("rabbitmq_url")


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A `postgresql+psycopg://` URL of a server that accepts connections: DATABASE_URL, else a container."""
    try:
        external = normalise_postgres_url(os.environ.get("DATABASE_URL", "").strip())
    except ValueError as exc:
        pytest.fail(f"DATABASE_URL: {exc}", pytrace=False)
    if external:
        _wait_until(lambda: _postgres_problem(external), what="DATABASE_URL", timeout=EXTERNAL_TIMEOUT)
        try:
            yield external
        finally:
            _drop_created_databases(external)
        return
    client: docker.DockerClient = request.getfixturevalue("docker_client")
    image = os.environ.get("POSTGRES_IMAGE") or DEFAULT_POSTGRES_IMAGE
    _ensure_image(client, image, "POSTGRES_IMAGE")
    user, password, database = "inference", secrets.token_hex(16), "inference"
    container, port = _start_container(
        client,
        fixture="postgres_url",
        image=image,
        env={"POSTGRES_USER": user, "POSTGRES_PASSWORD": password, "POSTGRES_DB": database},
        port=5432,
    )
    try:
        url = f"postgresql+psycopg://{user}:{password}@127.0.0.1:{port}/{database}"
        _wait_until(
            lambda: _postgres_problem(url),
            what=f"PostgreSQL ({image}) to accept connections",
            timeout=START_TIMEOUT,
            container=container,
        )
        yield url
    finally:
        _CREATED_DATABASES.pop(url, None)
        _remove_container("postgres_url")


@pytest.fixture(name="fresh_postgres_database", scope="session")
def _fresh_postgres_database_fixture() -> Callable[[str], str]:
    """The `fresh_postgres_database(postgres_url) -> url` helper, for tests that prefer a fixture to an import."""
    return fresh_postgres_database


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """The tag of a busybox image for test models (BUSYBOX_IMAGE, default busybox:stable); fails when absent."""
    image = os.environ.get("BUSYBOX_IMAGE") or DEFAULT_BUSYBOX_IMAGE
    _ensure_image(docker_client, image, "BUSYBOX_IMAGE")
    return image
