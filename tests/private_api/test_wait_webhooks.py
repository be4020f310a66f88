"""Webhooks: callback_url checked at submission, a signed POST when the task ends, retries, refusals at send time."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from private_api.config import Settings
from private_api.crud_webhooks import RetryPolicy, record_result
from tests.private_api.conftest import AUTH, TOKEN, LiveServer
from tests.private_api.helpers import make_zip
from tests.private_api.test_wait import app_of
from webhooks.config import Settings as SenderSettings
from webhooks.sending import Resolver, resolve
from webhooks.service import Sender

SECRET = "webhook-secret-0123456789abcdef"
ALLOWED = "127.0.0.1 *.example.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with webhooks on and short backoffs."""
    return settings.model_copy(
        update={"webhook_allowed_hosts": ALLOWED, "webhook_backoff_seconds": 0.2, "webhook_lease_seconds": 30.0}
    )


class Receiver:
    """An HTTP receiver on 127.0.0.1 answering the given status codes in turn (then 200), recording each call."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = list(codes)
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                if code in (301, 302):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=30) as client:
        query = {"container_tag": "busybox:stable", "human_readable_id": "m", "use_gpu": "false"}
        assert client.post("/api/models/", params=query).status_code == 200
        yield client


def _submit(http: httpx.Client, callback_url: str | None) -> httpx.Response:
    params = {"human_readable_id": "m", **({"callback_url": callback_url} if callback_url else {})}
    return http.post("/api/tasks/", params=params, files={"zip_file": ("in.zip", make_zip())})


def _ended_task(http: httpx.Client, callback_url: str) -> str:
    """A task with this callback that ran and finished."""
    response = _submit(http, callback_url)
    assert response.status_code == 200, response.text
    uid = str(response.json())
    assert http.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "c1"}).status_code == 200
    finish = {"consumer_id": "c1", "attempt": 1, "status": "finished"}
    assert http.post(f"/internal/tasks/{uid}/finish", json=finish).status_code == 200
    return uid


def _sender(live: LiveServer, resolver: Resolver = resolve, allowed: str = ALLOWED) -> Sender:
    settings = SenderSettings(
        internal_token=TOKEN, private_api_url=live.url, webhook_secret=SECRET, webhook_allowed_hosts=allowed
    )
    return Sender(settings, resolver=resolver)


def _webhook(http: httpx.Client, uid: str) -> dict[str, Any]:
    webhook: dict[str, Any] = http.get(f"/api/tasks/{uid}/status").json()["webhook"]
    return webhook


def test_callback_url_is_checked_at_submission(http: httpx.Client) -> None:
    for refused in (
        "https://evil.test/hook",
        "ftp://127.0.0.1/hook",
        "http://user:pw@127.0.0.1/hook",
        "https://example.test.evil.test/x",
        "not a url",
    ):
        response = _submit(http, refused)
        assert response.status_code == 400, (refused, response.text)
        assert "callback" in response.json()["detail"]
    accepted = _submit(http, "https://hooks.example.test/done?run=7")
    assert accepted.status_code == 200
    status = http.get(f"/api/tasks/{accepted.json()}/status").json()
    assert status["callback_url"] == "https://hooks.example.test/done?run=7"
    assert status["webhook"]["state"] == "pending" and status["webhook"]["attempts"] == 0
    assert _submit(http, None).status_code == 200
    # Nothing is due while the task has not ended.
    assert http.post("/internal/webhooks/due").json() == []


def test_delivery_is_signed_and_retried_after_500_and_a_redirect(live: LiveServer, http: httpx.Client) -> None:
    receiver = Receiver([500, 302])
    sender = _sender(live)
    try:
        uid = _ended_task(http, receiver.url)
        assert sender.run_once() == 1
        first = _webhook(http, uid)
        assert first["state"] == "pending" and first["attempts"] == 1 and "HTTP 500" in first["last_error"]
        assert first["next_at"] is not None
        assert sender.run_once() == 0  # not due before its backoff
        time.sleep(0.3)
        assert sender.run_once() == 1
        second = _webhook(http, uid)
        assert second["attempts"] == 2 and "redirect" in second["last_error"]
        time.sleep(0.5)
        assert sender.run_once() == 1
        done = _webhook(http, uid)
        assert done["state"] == "delivered" and done["attempts"] == 3 and done["delivered_at"] is not None
        assert len(receiver.calls) == 3  # the redirect was not followed
        headers, body = receiver.calls[-1]
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-inferenceserver-signature"], expected)
        sent = json.loads(body)
        assert sent["uid"] == uid and sent["status"] == "finished" and sent["webhook"]["attempts"] == 2
        assert sender.run_once() == 0
    finally:
        sender.close()
        receiver.close()


def test_refusals_at_send_time(live: LiveServer, http: httpx.Client) -> None:
    receiver = Receiver([])
    # DNS of a pattern-allowed host points inside: refused, not tried again.
    inside = _sender(live, resolver=lambda host, port: ["10.1.2.3"])
    # The operator has taken the host off the sender's list since the task was submitted.
    narrower = _sender(live, allowed="other.test")
    try:
        uid = _ended_task(http, "http://hook.example.test/x")
        assert inside.run_once() == 1
        refused = _webhook(http, uid)
        assert refused["state"] == "failed" and "10.1.2.3 is an internal address" in refused["last_error"]
        assert inside.run_once() == 0
        uid = _ended_task(http, receiver.url)
        assert narrower.run_once() == 1
        gone = _webhook(http, uid)
        assert gone["state"] == "failed" and "not in WEBHOOK_ALLOWED_HOSTS" in gone["last_error"]
        assert receiver.calls == []
    finally:
        inside.close()
        narrower.close()
        receiver.close()


def test_a_late_or_repeated_report_is_refused(http: httpx.Client) -> None:
    uid = _ended_task(http, "https://hooks.example.test/x")
    (leased,) = http.post("/internal/webhooks/due").json()
    assert leased["uid"] == uid and leased["attempt"] == 1 and leased["status"]["status"] == "finished"
    assert http.post("/internal/webhooks/due").json() == []  # leased: no second sender gets it
    report = {"attempt": 1, "ok": True}
    assert http.post(f"/internal/webhooks/{uid}/result", json=report).status_code == 200
    assert http.post(f"/internal/webhooks/{uid}/result", json=report).status_code == 409


def test_given_up_once_the_next_try_falls_past_the_window(live: LiveServer, http: httpx.Client) -> None:
    uid = _ended_task(http, "https://hooks.example.test/x")
    assert len(http.post("/internal/webhooks/due").json()) == 1
    policy = RetryPolicy(backoff_seconds=10, give_up_seconds=5)
    with app_of(live).state.sessions() as session:
        out = record_result(session, uid=uid, attempt=1, ok=False, error="HTTP 503", permanent=False, policy=policy)
    assert out["state"] == "failed" and out["attempts"] == 1 and out["last_error"] == "HTTP 503"
    assert _webhook(http, uid)["state"] == "failed"
