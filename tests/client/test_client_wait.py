"""Waiting in the SDK and CLI: long polls with `wait`, the fallback to plain polls, the progress line."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from fake_public_api import FakeServer

from inference_client import InferenceClient
from inference_client.cli import main
from inference_client.errors import BadRequestError
from inference_client.progress import StateSpinner
from inference_client.results import TaskStatus

UID = "u" * 32


class StatusServer:
    """Answers `GET /api/tasks/UID/status` from a script of states; `ignores_wait`: like a server before `wait`."""

    def __init__(self, states: list[dict[str, Any]], *, ignores_wait: bool = False, repeat: int = 0) -> None:
        self.states = states
        self.ignores_wait = ignores_wait
        self.repeat = repeat
        self.waits: list[str | None] = []
        self.at = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/api/tasks/{UID}/status"
        wait = request.url.params.get("wait")
        self.waits.append(wait)
        if self.ignores_wait and self.repeat > 0 and len(self.waits) > 1:
            self.repeat -= 1  # the same answer again, at once
        elif len(self.waits) > 1:
            self.at = min(self.at + 1, len(self.states) - 1)
        return httpx.Response(200, json={"uid": UID, **self.states[self.at]})

    def client(self, pauses: list[float]) -> InferenceClient:
        return InferenceClient("https://x.test", transport=httpx.MockTransport(self.handle), sleep=pauses.append)


STATES: list[dict[str, Any]] = [
    {"status": "pending", "queue_position": 2},
    {"status": "running", "phase": "preparing"},
    {"status": "running", "phase": "running", "progress": 0.25},
    {"status": "running", "phase": "running", "progress": 0.5, "progress_message": "fold 2"},
    {"status": "finished", "phase": "uploading", "progress": 1.0},
]


def test_wait_long_polls_without_sleeping() -> None:
    server = StatusServer(STATES)
    pauses: list[float] = []
    seen: list[TaskStatus] = []
    final = server.client(pauses).wait(UID, on_status=seen.append)
    assert final.status == "finished" and pauses == []
    assert server.waits == [None, "60", "60", "60", "60"]  # the first look is a plain poll, shown at once
    assert [s.progress for s in seen] == [None, None, 0.25, 0.5, 1.0]
    assert seen[3].progress_message == "fold 2" and seen[1].phase == "preparing"


def test_wait_falls_back_to_polls_when_the_server_ignores_wait() -> None:
    server = StatusServer(STATES[:2] + STATES[-1:], ignores_wait=True, repeat=3)
    pauses: list[float] = []
    assert server.client(pauses).wait(UID, poll_initial=1.0, poll_max=4.0).status == "finished"
    # One long poll that came back at once unchanged; plain polls with backoff from then on.
    assert server.waits[:2] == [None, "60"] and set(server.waits[2:]) == {None}
    assert len(pauses) >= 3 and pauses[1] > pauses[0] * 1.2


def test_wait_keeps_long_polls_within_its_timeout() -> None:
    server = StatusServer(STATES)
    InferenceClient("https://x.test", transport=httpx.MockTransport(server.handle)).wait(UID, timeout=30)
    assert server.waits[1] is not None and 29 <= float(server.waits[1]) <= 30


def test_status_wait_bounds() -> None:
    client = StatusServer(STATES).client([])
    for bad in (0, -1, 61):
        with pytest.raises(BadRequestError):
            client.status(UID, wait=bad)
    assert client.status(UID, wait=0.5).status == "pending"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_as_a_bar_on_a_terminal_and_as_lines_otherwise() -> None:
    statuses = [TaskStatus.model_validate({"uid": UID, **s}) for s in STATES]
    lines = io.StringIO()
    spinner = StateSpinner(UID, stream=lines)
    for status in [*statuses[:3], statuses[2], *statuses[3:]]:
        spinner(status)
    spinner.close()
    assert lines.getvalue().splitlines() == [
        f"task {UID}: pending (queue position 2)",
        f"task {UID}: running (preparing)",
        f"task {UID}: running 25%",
        f"task {UID}: running 50% fold 2",
        f"task {UID}: finished",
    ]
    terminal = Terminal()
    spinner = StateSpinner(UID, stream=terminal)
    spinner(statuses[3])
    spinner.close()
    assert "[##########----------]  50% fold 2" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\x1b[K")


def test_cli_tasks_wait_and_submit_with_a_callback(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    url = ["--url", "https://inference.test"]
    assert main([*url, "models", "add", "slow", "slow", "--cpu"], transport=fake_server.transport()) == 0
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("a")
    argv = [*url, "tasks", "submit", "slow", str(src), "--callback-url", "https://hooks.example.org/x"]
    assert main(argv, transport=fake_server.transport()) == 0
    uid = capsys.readouterr().out.strip().splitlines()[-1]
    posted = [r for r in fake_server.requests if r.method == "POST" and r.url.path == "/api/tasks/"]
    assert posted[-1].url.params["callback_url"] == "https://hooks.example.org/x"
    fast = ["--poll-interval", "0.01", "--poll-max", "0.02"]
    assert main([*url, "tasks", "wait", uid, *fast], transport=fake_server.transport()) == 0
    _, err = capsys.readouterr()
    assert f"task {uid}: finished" in err
