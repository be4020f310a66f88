"""`make up`'s steps (scripts/setup): .env with fresh secrets, a certificate, the address; none replaces what exists."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from common.settings import secret_problem

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts/setup"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _setup(step: str, env_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run one step with only this environment."""
    base = {"PATH": os.environ["PATH"], "ENV_FILE": str(env_file)}
    return subprocess.run(
        [str(SETUP), step], env={**base, **env}, capture_output=True, text=True, timeout=60, check=True
    )


def _values(path: Path) -> dict[str, str]:
    """The set lines of an env file."""
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", path.read_text(), re.MULTILINE))


def test_env_gets_fresh_secrets_and_is_never_replaced(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    _setup("env", env_file)
    values = _values(env_file)
    example = _values(ROOT / ".env.example")
    assert set(values) == set(example)
    placeholders = [name for name, value in example.items() if value == "change-me"]
    assert {"INTERNAL_TOKEN", "RABBITMQ_PASSWORD"} <= set(placeholders)
    for name in placeholders:
        assert secret_problem(values[name]) is None, name
    assert len({values[name] for name in placeholders}) == len(placeholders), "every secret is its own"
    assert {k: v for k, v in values.items() if k not in placeholders} == {
        k: v for k, v in example.items() if k not in placeholders
    }
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    env_file.write_text(env_file.read_text() + "# edited by the operator\n")
    before = env_file.read_text()
    assert "left as it is" in _setup("env", env_file).stdout
    assert env_file.read_text() == before


def test_cert_for_the_domain_only_when_missing(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    certs = tmp_path / "certs"
    env_file.write_text(f"DOMAIN=inference.example.org\nTRAEFIK_CERTS_DIR={certs}\n")
    _setup("cert", env_file)
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(certs / "cert.crt")], capture_output=True, text=True
    ).stdout
    assert "DNS:inference.example.org" in text
    before = (certs / "cert.crt").read_bytes()
    assert "left as it is" in _setup("cert", env_file).stdout
    assert (certs / "cert.crt").read_bytes() == before
    # A certificate for another name is kept, with a warning.
    changed = _setup("cert", env_file, DOMAIN="other.example.org")
    assert "not for 'other.example.org'" in changed.stderr
    assert (certs / "cert.crt").read_bytes() == before


def test_cert_defaults_to_localhost_and_url_says_how_to_trust_it(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    certs = tmp_path / "certs"
    env_file.write_text(f"DOMAIN=\nHTTPS_PORT=8443\nTRAEFIK_CERTS_DIR={certs}\n")
    _setup("cert", env_file)
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(certs / "cert.crt")], capture_output=True, text=True
    ).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    out = _setup("url", env_file).stdout
    assert "https://localhost:8443/" in out
    assert f"--cacert {certs}/cert.crt" in out
