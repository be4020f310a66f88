"""`InferenceClient`: a synchronous SDK for InferenceServer's public API (httpx)."""

from __future__ import annotations

import logging
import os
import random
import re
import ssl
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO
from urllib.parse import quote

import httpx

from common.zips import UnsafeZipError, ZipLimits, safe_extract
from inference_client.errors import (
    BadRequestError,
    ConnectionFailedError,
    InferenceServerError,
    ModelNotFoundError,
    NotOfferedError,
    ServerBusyError,
    TaskFailedError,
    TaskNotFoundError,
    TaskWaitTimeoutError,
    error_from_response,
)
from inference_client.results import Model, TaskPage, TaskStatus
from inference_client.uploads import (
    Body,
    ProgressCallback,
    bytes_body,
    fileobj_body,
    folder_body,
    zip_file_body,
)

__all__ = ["DEFAULT_TIMEOUT", "InferenceClient", "InputSource", "is_zip_path"]

logger = logging.getLogger(__name__)

InputSource = str | os.PathLike[str] | bytes | BinaryIO
"""A task input: a folder (zipped on the fly), a zip file's path, zip bytes, or an open binary file."""

DEFAULT_TIMEOUT = httpx.Timeout(connect=15.0, read=120.0, write=120.0, pool=15.0)
# Once a multi-GB upload is sent the server still checks and stores it before it answers.
_UPLOAD_READ_TIMEOUT = 1800.0
_UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_CHUNK = 1024 * 1024
_MODEL_QUERY_FIELDS = ("description", "use_gpu", "timeout", "mem_limit", "shm_size", "cpus", "network")


def is_zip_path(path: str | os.PathLike[str]) -> bool:
    """True when the path names a zip file rather than a folder (by its `.zip` suffix)."""
    return str(path).lower().endswith(".zip")


def _query_value(value: Any) -> str:
    """Query strings the server parses: booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class InferenceClient:
    """Talks to one InferenceServer; use as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        internal_token: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        busy_retry_seconds: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url or not re.match(r"^https?://[^/]", base_url):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        all_headers = {"User-Agent": "inference-server-client/0.1", "Accept": "application/json"}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        if internal_token:
            # Operators on the internal network may talk to the private API directly.
            all_headers["X-Internal-Token"] = internal_token
        all_headers.update(headers or {})
        if isinstance(verify, str):
            if not Path(verify).is_file():
                raise ValueError(f"CA certificate file not found: {verify}")
            try:
                verify = ssl.create_default_context(cafile=verify)
            except ssl.SSLError as exc:
                raise ValueError(f"{verify} is not a PEM CA certificate: {exc}") from exc
        self.base_url = base_url.rstrip("/")
        self.busy_retry_seconds = busy_retry_seconds
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=all_headers,
            verify=verify,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- plumbing -----------------------------------------------------------------------------------------

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """Send a request and yield the streamed response, raising the SDK error for any failure."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 300:
                    response.read()
                    raise self._error(response)
                yield response
        except httpx.TimeoutException as exc:
            raise ConnectionFailedError(f"{method} {self.base_url}{path} timed out ({exc})") from exc
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"cannot reach {self.base_url}: {exc}") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request, read the whole answer, and raise the SDK error for any failure."""
        with self._stream(method, path, **kwargs) as response:
            response.read()
            return response

    @staticmethod
    def _error(response: httpx.Response) -> InferenceServerError:
        """The SDK error for an error response."""
        text = response.text
        try:
            body = response.json()
        except ValueError:
            body = None
        if 300 <= response.status_code < 400:
            where = response.headers.get("location", "?")
            return BadRequestError(
                f"server answered a redirect to {where}; check the server URL (http vs https, path)",
                status_code=response.status_code,
            )
        return error_from_response(response.status_code, body, text, dict(response.headers))

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        """The JSON body, or a clear error when the server sent something else."""
        try:
            return response.json()
        except ValueError as exc:
            raise InferenceServerError(
                f"expected JSON from {response.request.url}, got {response.text[:200]!r}",
                status_code=response.status_code,
            ) from exc

    @staticmethod
    def _uid(uid: str) -> str:
        """A task uid checked for shape, so it cannot change the URL path."""
        if not isinstance(uid, str) or not _UID_RE.fullmatch(uid):
            raise TaskNotFoundError(f"task not found: {uid!r} is not a task uid (letters, digits, '-', '_')")
        return uid

    @staticmethod
    def _hid(human_readable_id: str) -> str:
        """A model id quoted for a URL path."""
        if not human_readable_id:
            raise BadRequestError("a model's human_readable_id must not be empty")
        return quote(human_readable_id, safe="")

    # -- service ------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The server's health answer (`GET /healthz`)."""
        response = self._request("GET", "/healthz")
        try:
            data = response.json()
        except ValueError:
            data = {"status": response.text.strip() or "ok"}
        return data if isinstance(data, dict) else {"status": data}

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
        body = self._model_zip_body(model_zip) if model_zip is not None else None
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
        params = {k: _query_value(v) for k, v in fields.items() if v is not None}
        if model_zip is not None:
            params["model_available"] = "true"
        body = self._model_zip_body(model_zip) if model_zip is not None else None
        path = f"/api/models/{self._hid(human_readable_id)}"
        return Model.model_validate(self._json(self._send_body("PATCH", path, params, body, progress)))

    def delete_model(self, human_readable_id: str) -> None:
        """Delete a model; ModelNotFoundError when unknown."""
        self._request("DELETE", f"/api/models/{self._hid(human_readable_id)}")

    @staticmethod
    def _model_zip_body(model_zip: str | os.PathLike[str]) -> Body:
        """The multipart body of a model zip, checked locally first."""
        path = Path(model_zip)
        if path.is_dir():
            return folder_body(path)
        if not path.is_file():
            raise BadRequestError(f"model zip not found: {path}")
        if not zipfile.is_zipfile(path):
            raise BadRequestError(f"{path} is not a zip file")
        return zip_file_body(path)

    # -- tasks --------------------------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        input: InputSource,
        *,
        progress: ProgressCallback | None = None,
        on_busy: Callable[[float], None] | None = None,
    ) -> str:
        """Post an input (folder, zip path, zip bytes or binary file) for a model; returns the task uid."""
        if not model:
            raise BadRequestError("a model's human_readable_id must not be empty")
        body = self.input_body(input)
        response = self._send_body("POST", "/api/tasks/", {"human_readable_id": model}, body, progress, on_busy)
        uid = self._json(response)
        if not isinstance(uid, str):
            raise InferenceServerError(f"expected the task uid as a JSON string, got {str(uid)[:200]}")
        return uid

    @staticmethod
    def input_body(input: InputSource) -> Body:
        """The multipart body for a task input, checked locally where it is a path."""
        if isinstance(input, bytes | bytearray):
            return bytes_body(bytes(input))
        if isinstance(input, str | os.PathLike):
            path = Path(input)
            if path.is_dir():
                return folder_body(path)
            if not path.exists():
                raise BadRequestError(f"input not found: {path}")
            if not path.is_file():
                raise BadRequestError(f"input is neither a folder nor a file: {path}")
            if not zipfile.is_zipfile(path):
                raise BadRequestError(f"{path} is not a zip file; give a zip or a folder")
            return zip_file_body(path)
        if hasattr(input, "read"):
            return fileobj_body(input, filename=Path(getattr(input, "name", "input.zip")).name)
        raise TypeError(f"input must be a folder, a zip path, bytes or a binary file, not {type(input).__name__}")

    def _send_body(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        body: Body | None,
        progress: ProgressCallback | None,
        on_busy: Callable[[float], None] | None = None,
    ) -> httpx.Response:
        """Send a (possibly streamed) body, waiting and resending while the server answers 429/503."""
        deadline = time.monotonic() + self.busy_retry_seconds
        delay = 2.0
        while True:
            try:
                if body is None:
                    return self._request(method, path, params=params)
                timeout = self._http.timeout
                upload_timeout = httpx.Timeout(
                    connect=timeout.connect,
                    read=max(timeout.read or 0, _UPLOAD_READ_TIMEOUT),
                    write=timeout.write,
                    pool=timeout.pool,
                )
                return self._request(
                    method,
                    path,
                    params=params,
                    content=body.chunks(progress),
                    headers=body.headers(),
                    timeout=upload_timeout,
                )
            except ServerBusyError as exc:
                wait = exc.retry_after if exc.retry_after is not None else delay
                if time.monotonic() + wait > deadline or (body is not None and body.total_source_bytes is None):
                    raise
                logger.info("server busy (%s); retrying in %.0f s", exc.message, wait)
                if on_busy:
                    on_busy(wait)
                self._sleep(wait)
                delay = min(delay * 2, 60.0)

    def status(self, uid: str) -> TaskStatus:
        """Where a task stands (status, queue position, attempt, exit code, error)."""
        data = self._json(self._request("GET", f"/api/tasks/{self._uid(uid)}/status"))
        return TaskStatus.model_validate(data)

    def logs(self, uid: str) -> str:
        """The model container's stdout/stderr so far (bounded by the server)."""
        return self._request("GET", f"/api/tasks/{self._uid(uid)}/logs").text

    def list_tasks(
        self, *, status: str | None = None, model: str | None = None, limit: int = 100, offset: int = 0
    ) -> TaskPage:
        """A page of tasks, newest first, optionally filtered by status and model."""
        params: dict[str, str] = {"limit": str(limit), "offset": str(offset)}
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
    ) -> TaskStatus:
        """Poll with backoff until the task is finished, failed or cancelled; returns its final status."""
        sleep = sleep or self._sleep
        start = time.monotonic()
        delay = poll_initial
        connection_failures = 0
        last_state: str | None = None
        while True:
            try:
                current = self.status(uid)
                connection_failures = 0
            except ConnectionFailedError:
                # A proxy restart or a network blip must not lose a task that runs for hours.
                connection_failures += 1
                if connection_failures > 5:
                    raise
                current = None
            if current is not None:
                if on_status:
                    on_status(current)
                if current.is_final:
                    return current
                if current.status != last_state:
                    delay = poll_initial
                    last_state = current.status
            elapsed = time.monotonic() - start
            if timeout is not None and elapsed >= timeout:
                raise TaskWaitTimeoutError(
                    f"task {uid} still {last_state or 'unknown'} after {timeout:.0f} s", status_code=None
                )
            pause = min(delay, poll_max) * random.uniform(0.9, 1.1)
            if timeout is not None:
                pause = max(0.0, min(pause, timeout - elapsed))
            sleep(pause)
            delay = min(delay * 1.5, poll_max)

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
        if not isinstance(dest, str | os.PathLike):
            self._fetch_into(path, dest, progress, on_start)
            return None
        target = Path(dest)
        if is_zip_path(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            # Written beside the target and renamed at the end: an interrupted download leaves no half zip.
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    self._fetch_into(path, out, progress, on_start)
                os.replace(tmp_name, target)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
            return target
        if target.exists() and not target.is_dir():
            raise BadRequestError(f"{target} exists and is not a folder; give a folder or a path ending in .zip")
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="inference-output-") as tmp:
            zip_path = Path(tmp) / "output.zip"
            with open(zip_path, "wb") as out:
                self._fetch_into(path, out, progress, on_start)
            try:
                safe_extract(zip_path, target, zip_limits or ZipLimits())
            except UnsafeZipError as exc:
                raise InferenceServerError(f"the output zip cannot be unpacked safely: {exc}") from exc
        return target

    def _fetch_into(
        self,
        path: str,
        out: IO[bytes],
        progress: ProgressCallback | None,
        on_start: Callable[[int | None], None] | None,
    ) -> None:
        """Stream a GET answer into an open file."""
        with self._stream("GET", path, headers={"Accept": "application/zip, application/json"}) as response:
            length = response.headers.get("content-length")
            if on_start:
                on_start(int(length) if length and length.isdigit() else None)
            try:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            except httpx.TransportError as exc:
                raise ConnectionFailedError(f"download of {path} broke off: {exc}") from exc

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
