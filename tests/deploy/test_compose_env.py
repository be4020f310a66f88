"""Every setting .env.example lists reaches the services that read it under docker compose (`docker compose config`)."""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"
WORK_DIR = "/var/lib/inference-server/work"

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI with compose v2")

PRIVATE = ["private_api.config:Settings", "common.zips:ZipSettings"]
PUBLIC = ["public_api.config:Settings"]
CONSUMER = ["job_consumer.config:ConsumerSettings", "common.zips:ZipSettings"]
WEBHOOKS = ["webhooks.config:Settings"]
# Services that read settings, and the settings classes whose variables they read.
SERVICES = {
    "docker-compose.yaml": {
        "private-api": PRIVATE,
        "public-api": PUBLIC,
        "job-consumer-cpu": CONSUMER,
        "job-consumer-gpu0": CONSUMER,
        "webhooks": WEBHOOKS,
    },
    "docker-compose.gpu-host.yaml": {"job-consumer-gpu": CONSUMER},
}
# Compose's own variables: read by `docker compose`, by no service.
COMPOSE_OWN = {"COMPOSE_PROFILES", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME"}
LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def _example() -> dict[str, str]:
    """Every variable .env.example lists, set or commented out, with its value (a set line wins)."""
    values: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = LINE.match(line.strip())
        if not match:
            continue
        hash_, name, value = match.groups()
        value = re.sub(r"\s+#.*$", "", value).strip()
        (commented if hash_ else values)[name] = value
    return {**commented, **values}


def _read_by(specs: list[str]) -> set[str]:
    """The environment variables these settings classes read (classes that do not exist yet are skipped)."""
    names: set[str] = set()
    for spec in specs:
        module_name, _, class_name = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        assert issubclass(cls, BaseSettings)
        prefix = str(cls.model_config.get("env_prefix") or "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            names.add(alias.upper() if isinstance(alias, str) else (prefix + field_name).upper())
    return names


def _compose_text() -> str:
    """All compose files, for the variables they interpolate."""
    return "\n".join(path.read_text() for path in ROOT.glob("docker-compose*.yaml"))


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """.env.example with every line uncommented: a value of its own for each variable compose does not interpolate."""
    text = _compose_text()
    values = {}
    for name, value in _example().items():
        if value == "change-me":
            value = secrets.token_hex(16)
        elif f"${{{name}" not in text and name not in COMPOSE_OWN:
            value = f"probe-{name.lower()}"
        values[name] = value
    path = tmp_path_factory.mktemp("env") / "probe.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path, values


def _config(compose_file: str, env_file: Path, *extra: str) -> dict[str, Any]:
    """`docker compose config` as JSON, with only this env file as input."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "ENV_FILE": str(env_file)}
    result = subprocess.run(
        ["docker", "compose", "-f", compose_file, "--env-file", str(env_file), *extra, "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _set_by_compose(service: str, values: dict[str, str], project: str) -> dict[str, str]:
    """The few values compose itself sets for a service (they win over .env)."""
    rabbitmq = f"amqp://{values['RABBITMQ_USER']}:{values['RABBITMQ_PASSWORD']}@rabbitmq:5672/%2F"
    work_dir = values.get("CONSUMER_WORK_DIR") or WORK_DIR
    if service == "private-api":
        return {"HOST": "0.0.0.0", "PORT": "7000", "DATA_DIR": "/data", "RABBITMQ_URL": rabbitmq}
    if service == "webhooks":
        return {"PRIVATE_API_URL": "http://private-api:7000"}
    if service == "public-api":
        return {"HOST": "0.0.0.0", "PORT": "8000", "PRIVATE_API_URL": "http://private-api:7000"}
    fixed = {
        "RABBITMQ_URL": rabbitmq,
        "PRIVATE_API_URL": "http://private-api:7000",
        "WORK_DIR": work_dir,
        "DEPLOYMENT_NAME": project,
        "GPU_PROBE_IMAGE": f"{values['IMAGE_PREFIX']}/job-consumer:{values['IMAGE_TAG']}",
    }
    if service == "job-consumer-gpu":
        return fixed  # scripts/gpu_slot.py sets GPU_DEVICE (and CONSUMER_ID unless given) at start
    return {**fixed, "GPU_DEVICE": "" if service == "job-consumer-cpu" else values["GPU0_DEVICE"]}


@pytest.mark.parametrize("compose_file", sorted(SERVICES))
def test_every_listed_setting_reaches_its_service(compose_file: str, probe_env: tuple[Path, dict[str, str]]) -> None:
    path, values = probe_env
    config = _config(compose_file, path, "--profile", "gpu")
    for service, specs in SERVICES[compose_file].items():
        environment = config["services"][service].get("environment") or {}
        fixed = _set_by_compose(service, values, config["name"])
        wanted = _read_by(specs) & set(values)
        assert wanted, f"{service}: no variable of .env.example is read by {specs}"
        if service == "job-consumer-gpu":
            wanted -= {"GPU_DEVICE", "CONSUMER_ID"}
        for name in sorted(wanted):
            expected = fixed.get(name, values[name])
            assert environment.get(name) == expected, (
                f"{service}: {name} is {environment.get(name)!r}, not {expected!r}"
            )


def test_every_listed_variable_has_a_reader() -> None:
    readers = set().union(*(_read_by(specs) for files in SERVICES.values() for specs in files.values()))
    text = _compose_text()
    unread = [name for name in _example() if name not in readers | COMPOSE_OWN and f"${{{name}" not in text]
    assert not unread, f".env.example lists variables nothing reads: {unread}"


def test_services_that_read_no_settings_get_no_secrets(probe_env: tuple[Path, dict[str, str]]) -> None:
    path, _ = probe_env
    config = _config("docker-compose.yaml", path, "--profile", "postgres")
    for service in ("traefik", "rabbitmq", "postgres"):
        environment = config["services"][service].get("environment") or {}
        assert "INTERNAL_TOKEN" not in environment, service
        # Traefik would read any TRAEFIK_* variable as its static configuration.
        assert not [name for name in environment if name.startswith("TRAEFIK_")], service


def test_compose_without_env_stops_with_one_line(tmp_path: Path) -> None:
    for name in ("docker-compose.yaml", "docker-compose.gpu-host.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
        result = subprocess.run(
            ["docker", "compose", "-f", name, "config", "-q"],
            cwd=tmp_path,
            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "make up" in lines[0], result.stderr


def test_gpu_host_declares_gpu_count_consumers(tmp_path: Path, probe_env: tuple[Path, dict[str, str]]) -> None:
    _, values = probe_env
    env_file = tmp_path / "gpu.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**values, "GPU_COUNT": "3", "GPU_DEVICES": "0,2,5"}.items()))
    service = _config("docker-compose.gpu-host.yaml", env_file)["services"]["job-consumer-gpu"]
    assert service["deploy"]["replicas"] == 3
    assert service["environment"]["GPU_DEVICES"] == "0,2,5"
    assert list(service["networks"]) == ["internal"], "attached to the overlay only"


def test_postgres_line_of_the_example_fills_in_the_generated_password(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    subprocess.run([str(ROOT / "scripts/setup"), "env"], env={**os.environ, "ENV_FILE": str(env_file)}, check=True)
    text = env_file.read_text().replace("\n# DATABASE_URL=postgresql", "\nDATABASE_URL=postgresql")
    env_file.write_text(text.replace("\nCOMPOSE_PROFILES=\n", "\nCOMPOSE_PROFILES=postgres\n"))
    password = re.findall(r"^POSTGRES_PASSWORD=(.*)$", text, re.MULTILINE)[0]
    config = _config("docker-compose.yaml", env_file)
    url = f"postgresql+psycopg://inference:{password}@postgres:5432/inference"
    assert config["services"]["private-api"]["environment"]["DATABASE_URL"] == url
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
