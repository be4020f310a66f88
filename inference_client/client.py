"""`InferenceClient`: a synchronous SDK for InferenceServer's public API (httpx)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from common.zips import ZipLimits
from inference_client.admin import AdminCalls
from inference_client.downloads import is_zip_path, save_output
from inference_client.errors import (
    BadRequestError,
    InferenceServerError,
    ModelNotFoundError,
    NotOfferedError,
    TaskFailedError,
)
from inference_client.http import DEFAULT_TIMEOUT
from inference_client.keys import KeysApi
from inference_client.results import Model, TaskPage, TaskStatus
from inference_client.uploads import Body, InputSource, ProgressCallback, input_body, model_zip_body
from inference_client.waiting import MAX_WAIT_SECONDS, wait_until_final

__all__ = ["DEFAULT_TIMEOUT", "InferenceClient", "InputSource", "is_zip_path"]

# The fields a model update carries over (PUT sends the whole model: a field left out would go back to its default).
_MODEL_QUERY_FIELDS = (
    "description", "use_gpu", "timeout", "mem_limit", "shm_size", "cpus", "network", "max_output_size", "user",
)  # fmt: skip


def _query_value(value: Any) -> str:
    """Query strings the server parses: booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class InferenceClient(AdminCalls, KeysApi):
    """Talks to one InferenceServer; use as a context manager or call `close()`."""

    # -- models -------------------------------------------------------------------------------------------

    def list_models(self) -> list[Model]:
        """All registered models."""
        data = self._json(self._request("GET", "/api/models/"))
        if not isinstance(data, list):
            raise InferenceServerError(f"expected a list of models, got {str(data)[:200]}")
        return [Model.model_validate(item) for item in data]

    def get_model(self, human_readable_id: str) -> Model:
        """One model; ModelNotFoundError when unknown."""
        try:
            data = self._json(self._request("GET", f"/api/models/{self._hid(human_readable_id)}"))
        except NotOfferedError:
            # The public API offers only the list; find the model there.
            for model in self.list_models():
                if model.human_readable_id == human_readable_id:
                    return model
            raise ModelNotFoundError(f"model {human_readable_id!r} not found", status_code=550) from None
        return Model.model_validate(data)

    def add_model(
        self,
        *,
        container_tag: str,
        human_readable_id: str,
        model_zip: str | os.PathLike[str] | None = None,
        description: str | None = None,
        use_gpu: bool = True,
        timeout: int | None = None,
        mem_limit: str | None = None,
        shm_size: str | None = None,
        cpus: float | None = None,
        network: bool | None = None,
        progress: ProgressCallback | None = None,
    ) -> Model:
        """Register a model; `model_zip` (optional) is mounted read-only at /model when it runs."""
        if not container_tag:
            raise BadRequestError("container_tag must not be empty")
        params: dict[str, str] = {
            "container_tag": container_tag,
            "human_readable_id": human_readable_id,
            "model_available": _query_value(model_zip is not None),
        }
        fields = {
            "description": description,
            "use_gpu": use_gpu,
            "timeout": timeout,
            "mem_limit": mem_limit,
            "shm_size": shm_size,
            "cpus": cpus,
            "network": network,
        }
        params.update({k: _query_value(v) for k, v in fields.items() if v is not None})
        body = model_zip_body(model_zip) if model_zip is not None else None
        data = self._json(self._send_body("POST", "/api/models/", params, body, progress))
        return Model.model_validate(data)

    def update_model(
        self,
        human_readable_id: str,
        *,
        model_zip: str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        **fields: Any,
    ) -> Model:
        """Change a model's fields (container_tag, description, use_gpu, limits) and/or replace its zip."""
        unknown = set(fields) - {"container_tag", *_MODEL_QUERY_FIELDS}
        if unknown:
            raise BadRequestError(f"unknown model fields: {', '.join(sorted(unknown))}")
        current = self.get_model(human_readable_id)
        merged = {name: getattr(current, name, None) for name in ("container_tag", *_MODEL_QUERY_FIELDS)}
        merged.update({k: v for k, v in fields.items() if v is not None})
        # PUT sends the whole model (a new version): the fields not given stay as they are now.
        params = {k: _query_value(v) for k, v in merged.items() if v is not None}
        if model_zip is not None:
            params["model_available"] = "true"
        body = model_zip_body(model_zip) if model_zip is not None else None
        path = f"/api/models/{self._hid(human_readable_id)}"
        return Model.model_validate(self._json(self._send_body("PUT", path, params, body, progress)))

    def delete_model(self, human_readable_id: str, *, force: bool = False) -> list[str]:
        """Delete a model (409 ConflictError while tasks wait, unless force cancels them); the cancelled uids."""
        params = {"force": "true"} if force else None
        response = self._request("DELETE", f"/api/models/{self._hid(human_readable_id)}", params=params)
        try:
            data = response.json()
        except ValueError:
            return []
        return [str(u) for u in data.get("cancelled", [])] if isinstance(data, dict) else []

    # -- tasks --------------------------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        input: InputSource,
        *,
        progress: ProgressCallback | None = None,
        on_busy: Callable[[float], None] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Post an input (folder, zip path, zip bytes or binary file) for a model; returns the task uid.

        Every submission carries an `Idempotency-Key` (a new random one unless given; the same on the SDK's own
        retries): sent again within 24 h it answers the same uid instead of making a second task.
        `callback_url`: the server POSTs the task's final status JSON there, signed (only to hosts it allows).
        """
        if not model:
            raise BadRequestError("a model's human_readable_id must not be empty")
        body = self.input_body(input)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        params = {"human_readable_id": model}
        if callback_url:
            params["callback_url"] = callback_url
        response = self._send_body("POST", "/api/tasks/", params, body, progress, on_busy, headers=headers)
        uid = self._json(response)
        if not isinstance(uid, str):
            raise InferenceServerError(f"expected the task uid as a JSON string, got {str(uid)[:200]}")
        return uid

    @staticmethod
    def input_body(input: InputSource) -> Body:
        """The multipart body for a task input, checked locally where it is a path."""
        return input_body(input)

    def status(self, uid: str, *, wait: float | None = None) -> TaskStatus:
        """Where a task stands (status, phase, progress, queue position, attempt, exit code, error).

        With `wait` (0 < wait <= 60 seconds) the server answers as soon as the status, phase or progress changes,
        or after `wait` seconds with the unchanged status (a long poll); a task that has ended answers at once.
        """
        path = f"/api/tasks/{self._uid(uid)}/status"
        if wait is None:
            return TaskStatus.model_validate(self._json(self._request("GET", path)))
        if not 0 < wait <= MAX_WAIT_SECONDS:
            raise BadRequestError(f"wait must be more than 0 and at most {MAX_WAIT_SECONDS:g} seconds")
        base = self._http.timeout
        timeout = httpx.Timeout(connect=base.connect, read=wait + 30.0, write=base.write, pool=base.pool)
        response = self._request("GET", path, params={"wait": f"{wait:g}"}, timeout=timeout)
        return TaskStatus.model_validate(self._json(response))

    def logs(self, uid: str) -> str:
        """The model container's stdout/stderr so far (bounded by the server)."""
        return self._request("GET", f"/api/tasks/{self._uid(uid)}/logs").text

    def list_tasks(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
        all: bool = False,
    ) -> TaskPage:
        """A page of your own tasks, newest first, optionally filtered by status and model (`all`: everyone's, for
        admin keys)."""
        params: dict[str, str] = {"limit": str(limit), "offset": str(offset)}
        if all:
            params["all"] = "true"
        if status:
            params["status"] = status
        if model:
            params["model"] = model
        return TaskPage.model_validate(self._json(self._request("GET", "/api/tasks/", params=params)))

    def cancel(self, uid: str) -> None:
        """Cancel a task (a running container is stopped) and delete its data."""
        self._request("DELETE", f"/api/tasks/{self._uid(uid)}")

    def wait(
        self,
        uid: str,
        *,
        timeout: float | None = None,
        poll_initial: float = 1.0,
        poll_max: float = 30.0,
        on_status: Callable[[TaskStatus], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        long_poll: bool = True,
    ) -> TaskStatus:
        """Wait until the task is finished, failed or cancelled; returns its final status.

        Long polls (`status(uid, wait=60)`): `on_status` sees every change of status, phase and progress as it
        happens. Against a server that ignores `wait`, or with `long_poll=False`, plain polls with backoff from
        `poll_initial` to `poll_max` seconds.
        """
        return wait_until_final(
            uid,
            lambda u, w: self.status(u, wait=w),
            timeout=timeout,
            poll_initial=poll_initial,
            poll_max=poll_max,
            on_status=on_status,
            sleep=sleep or self._sleep,
            long_poll=long_poll,
        )

    def download(
        self,
        uid: str,
        dest: str | os.PathLike[str] | IO[bytes],
        *,
        progress: ProgressCallback | None = None,
        on_start: Callable[[int | None], None] | None = None,
        zip_limits: ZipLimits | None = None,
    ) -> Path | None:
        """Fetch the output into a zip (a path ending in .zip, or an open file) or unpacked into a folder.

        Raises TaskNotFinishedError (551), TaskFailedError (552), TaskOutputMissingError (553),
        TaskNotFoundError (554) or ModelNotFoundError (550). Returns the path written (None for a file).
        """
        path = f"/api/tasks/{self._uid(uid)}"
        return save_output(lambda out: self._fetch_into(path, out, progress, on_start), dest, zip_limits)

    def failure(self, uid: str, status: TaskStatus | None = None) -> TaskFailedError:
        """The error of a failed task with its reason, exit code and log tail (from the 552 answer)."""
        try:
            self._request("GET", f"/api/tasks/{self._uid(uid)}")
        except TaskFailedError as exc:
            return exc
        status = status or self.status(uid)
        return TaskFailedError(
            f"task {uid} failed: {status.error}", reason=status.error, model_exit_code=status.exit_code
        )

    def run(
        self,
        model: str,
        input: InputSource,
        output: str | os.PathLike[str],
        *,
        timeout: float | None = None,
    ) -> TaskStatus:
        """Submit, wait and download in one call; raises TaskFailedError when the model fails."""
        uid = self.submit(model, input)
        final = self.wait(uid, timeout=timeout)
        if final.status == "failed":
            # The 552 answer carries the log tail; fetch it for a complete error.
            self.download(uid, output)
            raise TaskFailedError(
                f"task {uid} failed: {final.error}", reason=final.error, model_exit_code=final.exit_code
            )
        if final.status == "cancelled":
            raise InferenceServerError(f"task {uid} was cancelled")
        self.download(uid, output)
        return final
