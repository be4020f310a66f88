"""A fake of the public API behind `httpx.MockTransport`, for fast SDK and CLI tests (live tests use the real one)."""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx


@dataclass
class FakeTask:
    """One task: its input, the state it is in, and the states it still has to go through."""

    uid: str
    model: str
    input_zip: bytes
    states: list[str]
    status: str = "pending"
    output: bytes | None = None
    reason: str | None = None
    exit_code: int | None = None
    logs: str = ""


@dataclass
class FakeServer:
    """What the public API answers, with a model's behaviour chosen by its container_tag.

    `echo*`: the output is the input; `fail*`: exits 3 with a log; `nooutput*`: finished without output zip;
    `slow*`: stays running for a few polls. Each status poll moves a task one state forward.
    """

    api_key: str | None = None
    # False: like the public relay, which offers neither /api/models/{hid} nor the task list.
    private_routes: bool = True
    allow_post_model: bool = True
    busy_answers: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    uploads: list[bytes] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        """The transport to hand to InferenceClient or cli.main."""
        return httpx.MockTransport(self.handle)

    @staticmethod
    def _error(status: int, detail: Any, **extra: Any) -> httpx.Response:
        return httpx.Response(status, json={"detail": detail, **extra})

    @staticmethod
    def _zip_field(request: httpx.Request) -> bytes | None:
        """The `zip_file` part of a multipart body, or None."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return None
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.content
        )
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "zip_file":
                payload = part.get_payload(decode=True)
                return payload if isinstance(payload, bytes) else None
        return None

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Route one request."""
        self.requests.append(request)
        path = request.url.path.rstrip("/") or "/"
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "missing or wrong API key")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            return self._models(request, parts[2:])
        if parts[:2] == ["api", "tasks"]:
            return self._tasks(request, parts[2:])
        return self._error(404, "Not Found")

    def _model_json(self, hid: str, params: httpx.QueryParams, zip_bytes: bytes | None) -> dict[str, Any]:
        return {
            "id": len(self.models) + 1,
            "human_readable_id": hid,
            "container_tag": params["container_tag"],
            "description": params.get("description"),
            "use_gpu": params.get("use_gpu", "true") == "true",
            "model_available": zip_bytes is not None,
            "zip_sha256": None,
            "zip_size": len(zip_bytes) if zip_bytes is not None else None,
            "timeout": float(params.get("timeout", 3600)),
            "mem_limit": params.get("mem_limit", "8g"),
            "shm_size": params.get("shm_size", "1g"),
            "cpus": float(params.get("cpus", 4)),
            "network": params.get("network", "false") == "true",
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }

    def _models(self, request: httpx.Request, rest: list[str]) -> httpx.Response:
        if not rest and request.method == "GET":
            return httpx.Response(200, json=list(self.models.values()))
        if not rest and request.method == "POST":
            if not self.allow_post_model:
                return self._error(403, "posting models through the public API is off")
            params = request.url.params
            if "container_tag" not in params or "human_readable_id" not in params:
                return self._error(422, [{"loc": ["query", "container_tag"], "msg": "Field required"}])
            hid = params["human_readable_id"]
            zip_bytes = self._zip_field(request)
            if params.get("model_available") == "true" and zip_bytes is None:
                return self._error(422, "model_available=true needs a zip_file")
            if hid in self.models:
                return self._error(409, f"model {hid!r} exists")
            self.models[hid] = self._model_json(hid, params, zip_bytes)
            return httpx.Response(200, json=self.models[hid])
        if len(rest) == 1 and self.private_routes:
            if rest[0] not in self.models:
                return self._error(550, f"model {rest[0]!r} not found")
            if request.method == "DELETE":
                del self.models[rest[0]]
                return httpx.Response(200, json={"detail": "deleted"})
            return httpx.Response(200, json=self.models[rest[0]])
        return self._error(404, "Not Found")

    def _status_json(self, task: FakeTask) -> dict[str, Any]:
        return {
            "uid": task.uid,
            "model": task.model,
            "status": task.status,
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": None,
            "finished_at": None,
            "queue_position": 0 if task.status == "pending" else None,
            "attempt": 1,
            "exit_code": task.exit_code,
            "error": task.reason,
            "consumer_id": None,
            "input_size": len(task.input_zip),
            "output_size": len(task.output) if task.output is not None else None,
        }

    def _new_task(self, model: dict[str, Any], zip_bytes: bytes) -> FakeTask:
        tag = model["container_tag"]
        uid = "t" + secrets.token_urlsafe(16)  # as the server's: never starting with "-"
        task = FakeTask(uid=uid, model=model["human_readable_id"], input_zip=zip_bytes, states=[])
        if tag.startswith("slow"):
            task.states = ["pending", "running", "running", "running", "finished"]
        else:
            task.states = ["running", "failed" if tag.startswith("fail") else "finished"]
        if tag.startswith("fail"):
            task.reason, task.exit_code, task.logs = "the model exited with code 3", 3, "loading\nboom\n"
        elif not tag.startswith("nooutput"):
            task.output, task.logs = zip_bytes, "copied input to output\n"
        return task

    def _tasks(self, request: httpx.Request, rest: list[str]) -> httpx.Response:
        if not rest and request.method == "POST":
            if self.busy_answers > 0:
                self.busy_answers -= 1
                return httpx.Response(503, json={"detail": "queue full"}, headers={"Retry-After": "0"})
            params = request.url.params
            hid = params.get("human_readable_id") or params.get("model_human_readable_id")
            if not hid or hid not in self.models:
                return self._error(550, f"model {hid!r} not found")
            zip_bytes = self._zip_field(request)
            if zip_bytes is None:
                return self._error(422, "zip_file is required")
            self.uploads.append(zip_bytes)
            try:
                zipfile.ZipFile(io.BytesIO(zip_bytes)).testzip()
            except zipfile.BadZipFile:
                return self._error(400, "zip_file is not a valid zip file (is it truncated?)")
            task = self._new_task(self.models[hid], zip_bytes)
            self.tasks[task.uid] = task
            return httpx.Response(200, content=json.dumps(task.uid).encode())
        if not rest and request.method == "GET" and self.private_routes:
            items = [self._status_json(t) for t in self.tasks.values()]
            return httpx.Response(200, json={"items": items, "total": len(items)})
        if not rest:
            return self._error(405, "Method Not Allowed")
        found = self.tasks.get(rest[0])
        if found is None:
            return self._error(554, "task not found")
        return self._task(request, found, rest[1:])

    def _task(self, request: httpx.Request, task: FakeTask, rest: list[str]) -> httpx.Response:
        """Calls on one task."""
        if len(rest) == 1 and rest[0] == "status":
            if task.states:
                task.status = task.states.pop(0)
            return httpx.Response(200, json=self._status_json(task))
        if len(rest) == 1 and rest[0] == "logs":
            return httpx.Response(200, text=task.logs)
        if request.method == "DELETE":
            del self.tasks[task.uid]
            return httpx.Response(200, json={"detail": "deleted"})
        if task.model not in self.models:
            return self._error(550, f"model {task.model!r} no longer exists")
        if task.status in ("pending", "running"):
            return self._error(551, f"task is {task.status}")
        if task.status == "failed":
            return self._error(552, "task failed", reason=task.reason, exit_code=task.exit_code, log_tail=task.logs)
        if task.output is None:
            return self._error(553, "task finished but its output zip is missing")
        return httpx.Response(200, content=task.output, headers={"content-type": "application/zip"})
