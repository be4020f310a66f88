"""Fast tests of the `inference-server` CLI against the fake public API (MockTransport)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from fake_public_api import FakeServer

from inference_client.cli import ENV_URL, main

URL = ["--url", "https://inference.test"]
FAST = ["--poll-interval", "0.01", "--poll-max", "0.02"]


def run(fake: FakeServer, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI; returns exit code, stdout and stderr."""
    code = main([*URL, *argv], transport=fake.transport())
    out, err = capsys.readouterr()
    return code, out, err


def add_models(fake: FakeServer, capsys: pytest.CaptureFixture[str], *tags: str) -> None:
    """Register models whose id is their tag."""
    for tag in tags:
        assert run(fake, capsys, "models", "add", tag, tag, "--cpu")[0] == 0


def test_health_and_url_from_environment(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_URL, "https://from-env.test")
    assert main(["health", "--json"], transport=fake_server.transport()) == 0
    assert json.loads(capsys.readouterr().out) == {"status": "ok"}
    assert fake_server.requests[-1].url.host == "from-env.test"


def test_missing_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    assert main(["models", "list"]) == 2
    assert "no server URL" in capsys.readouterr().err


def test_insecure_and_ca_cert_conflict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert main([*URL, "--insecure", "--ca-cert", str(ca), "health"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*URL, "--ca-cert", str(tmp_path / "missing.pem"), "health"]) == 2
    assert "not found" in capsys.readouterr().err


def test_models_commands(fake_server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    weights = tmp_path / "model.zip"
    with zipfile.ZipFile(weights, "w") as archive:
        archive.writestr("w.pt", "w")
    code, out, _ = run(
        fake_server, capsys, "models", "add", "seg", "echo:1", "--zip", str(weights), "--shm-size", "2g",
        "--description", "a test", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["model_available"] is True
    assert run(fake_server, capsys, "models", "add", "seg", "echo:1")[0] == 6
    code, out, _ = run(fake_server, capsys, "models", "list")
    assert code == 0 and "seg" in out and "echo:1" in out
    code, out, _ = run(fake_server, capsys, "models", "show", "seg", "--json")
    assert json.loads(out)["shm_size"] == "2g"
    assert run(fake_server, capsys, "models", "delete", "seg")[0] == 0
    code, out, err = run(fake_server, capsys, "models", "show", "seg")
    assert code == 5 and "not found" in err
    fake_server.allow_post_model = False
    assert run(fake_server, capsys, "models", "add", "x", "echo")[0] == 4


def test_submit_folder_wait_and_unpack(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    add_models(fake_server, capsys, "echo")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "volume.raw").write_bytes(b"\x01" * 300_000)
    (src / "meta.json").write_text('{"id": 1}')
    code, out, err = run(fake_server, capsys, "tasks", "submit", "echo", str(src), "-o", str(tmp_path / "out"), *FAST)
    assert code == 0, err
    assert (tmp_path / "out" / "sub" / "volume.raw").read_bytes() == b"\x01" * 300_000
    assert "finished" in out
    code, out, _ = run(fake_server, capsys, "tasks", "submit", "echo", str(src), "--json")
    uid = json.loads(out)["uid"]
    code, out, _ = run(fake_server, capsys, "tasks", "get", uid, "--wait", "-o", str(tmp_path / "o.zip"), *FAST)
    assert code == 0
    with zipfile.ZipFile(tmp_path / "o.zip") as archive:
        assert archive.read("meta.json") == b'{"id": 1}'


def test_submit_prints_only_the_uid(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    add_models(fake_server, capsys, "echo")
    path = tmp_path / "in.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a", "a")
    code, out, _ = run(fake_server, capsys, "-q", "tasks", "submit", "echo", str(path))
    assert code == 0 and out.strip() in fake_server.tasks


def test_task_error_exit_codes(fake_server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    add_models(fake_server, capsys, "fail", "nooutput", "slow")
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("a")
    code, out, err = run(fake_server, capsys, "tasks", "submit", "fail", str(src), "--wait", *FAST, "--json")
    assert code == 8 and "boom" in err and json.loads(out)["exit_code"] == 3
    code, _, err = run(fake_server, capsys, "tasks", "submit", "nooutput", str(src), "-o", str(tmp_path / "x"), *FAST)
    assert code == 10
    code, out, _ = run(fake_server, capsys, "tasks", "submit", "slow", str(src))
    uid = out.strip()
    assert run(fake_server, capsys, "tasks", "get", uid, "-o", str(tmp_path / "y.zip"))[0] == 9
    code, out, _ = run(fake_server, capsys, "tasks", "status", uid, "--json")
    assert code == 0 and json.loads(out)["uid"] == uid
    assert run(fake_server, capsys, "tasks", "logs", uid)[0] == 0
    code, _, err = run(fake_server, capsys, "tasks", "get", uid, "--wait", "--timeout", "0.001", "--poll-interval", "5")
    assert code == 9 and "still" in err
    assert run(fake_server, capsys, "tasks", "cancel", uid)[0] == 0
    for action in ("status", "logs", "get", "cancel"):
        assert run(fake_server, capsys, "tasks", action, uid)[0] == 5, action
    assert run(fake_server, capsys, "tasks", "submit", "nope", str(src))[0] == 5
    assert run(fake_server, capsys, "tasks", "status", "bad/uid")[0] == 5


def test_bad_input_and_output_paths(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    add_models(fake_server, capsys, "echo")
    assert run(fake_server, capsys, "tasks", "submit", "echo", str(tmp_path / "missing"))[0] == 2
    text = tmp_path / "notes.txt"
    text.write_text("not a zip")
    code, _, err = run(fake_server, capsys, "tasks", "submit", "echo", str(text))
    assert code == 7 and "not a zip" in err
    code, _, err = run(fake_server, capsys, "tasks", "submit", "echo", str(tmp_path), "-o", str(text))
    assert code == 2 and "is a file" in err
    assert not fake_server.tasks  # refused before anything was uploaded


def test_list_tasks(fake_server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    add_models(fake_server, capsys, "echo")
    (tmp_path / "a").write_text("a")
    run(fake_server, capsys, "tasks", "submit", "echo", str(tmp_path))
    code, out, _ = run(fake_server, capsys, "tasks", "list", "--json")
    assert code == 0 and json.loads(out)["total"] == 1
