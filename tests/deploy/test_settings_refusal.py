"""Placeholders and short secrets stop every service at start with one line that names the variable, not its value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.settings import secret_problem, url_password_problem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "a-good-internal-token-0123456789"
GOOD_RABBIT = "amqp://inference:a-good-broker-password-0123@rabbitmq:5672/%2F"
SERVICES = ["private_api", "public_api", "job_consumer"]


def _start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start `python -m <module>` with only this environment; it must stop on its own."""
    base = {"PATH": os.environ["PATH"], "PORT": "1", "DATA_DIR": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("change-me", "placeholder"),
        ("CHANGE-ME", "placeholder"),
        ("<secret>", "placeholder"),
        ("", "placeholder"),
        ("short-secret", "shorter than 16"),
        ("0123456789abcdef", None),
    ],
)
def test_secret_rule(value: str, expected: str | None) -> None:
    problem = secret_problem(value)
    assert (problem is None) if expected is None else (expected in (problem or ""))


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("amqp://inference:change-me@rabbitmq:5672/%2F", True),
        ("amqp://inference:change%2Dme@rabbitmq:5672/%2F", True),
        ("amqp://inference:short@rabbitmq:5672/%2F", True),
        ("amqp://guest:guest@localhost:5672/%2F", False),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", False),
        ("amqp://guest:change-me@127.0.0.1:5672/%2F", True),
        (GOOD_RABBIT, False),
        ("postgresql+psycopg://inference:change-me@postgres:5432/inference", True),
        ("postgresql+psycopg://inference@postgres:5432/inference", False),
        ("", False),
    ],
)
def test_url_password_rule(url: str, refused: bool) -> None:
    assert (url_password_problem(url) is not None) is refused


@pytest.mark.parametrize("module", SERVICES)
@pytest.mark.parametrize(
    ("env", "variable", "secret"),
    [
        ({"INTERNAL_TOKEN": "change-me", "RABBITMQ_URL": GOOD_RABBIT}, "INTERNAL_TOKEN", "change-me"),
        ({"INTERNAL_TOKEN": "tiny-tok-9", "RABBITMQ_URL": GOOD_RABBIT}, "INTERNAL_TOKEN", "tiny-tok-9"),
        ({"RABBITMQ_URL": GOOD_RABBIT}, "INTERNAL_TOKEN", None),
    ],
)
def test_every_service_refuses_a_bad_token_in_one_line(
    module: str, env: dict[str, str], variable: str, secret: str | None
) -> None:
    result = _start(module, env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad settings" in lines[0] and f"{variable} must be set" in lines[0]
    assert "Traceback" not in result.stderr
    if secret:
        assert secret not in result.stderr


@pytest.mark.parametrize("module", ["private_api", "job_consumer"])
@pytest.mark.parametrize("password", ["change-me", "tiny-pw-77"])
def test_broker_password_placeholder_stops_its_readers(module: str, password: str) -> None:
    url = f"amqp://inference:{password}@rabbitmq:5672/%2F"
    result = _start(module, {"INTERNAL_TOKEN": TOKEN, "RABBITMQ_URL": url})
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "RABBITMQ_URL must carry a random password" in result.stderr
    assert password not in result.stderr


def test_database_password_placeholder_stops_the_private_api() -> None:
    url = "postgresql+psycopg://inference:change-me@postgres:5432/inference"
    result = _start("private_api", {"INTERNAL_TOKEN": TOKEN, "RABBITMQ_URL": GOOD_RABBIT, "DATABASE_URL": url})
    assert result.returncode != 0
    assert "DATABASE_URL must carry a random password" in result.stderr
    assert "change-me" not in result.stderr
