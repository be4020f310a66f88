"""TLS options of the CLI against a real HTTPS server with a self-signed certificate (openssl makes it)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inference_client.cli import main


class _Health(BaseHTTPRequestHandler):
    """Answers GET /healthz like the public API does."""

    def do_GET(self) -> None:
        """Serve /healthz; 404 otherwise."""
        body = json.dumps({"status": "ok"} if self.path == "/healthz" else {"detail": "Not Found"}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a fresh self-signed certificate; its URL and the certificate file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()


def test_self_signed_certificate_needs_ca_cert_or_insecure(
    https_server: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = https_server
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "INFERENCE_SERVER_CA_CERT", "INFERENCE_SERVER_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--url", url, "health"]) == 3
    assert "certificate" in capsys.readouterr().err.lower()
    assert main(["--url", url, "--ca-cert", str(cert), "health", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"status": "ok"}
    assert main(["--url", url, "--insecure", "health"]) == 0
    monkeypatch.setenv("INFERENCE_SERVER_CA_CERT", str(cert))
    assert main(["--url", url, "health"]) == 0
