"""The consumer's client of the private API's consumer calls (the only module here that speaks HTTP)."""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from job_consumer.errors import LeaseLost, PrivateApiError
from job_consumer.schemas import Claim

__all__ = ["ClaimOutcome", "ClaimResult", "PrivateApiClient"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_FINAL = {"finished", "failed", "cancelled"}


class ClaimOutcome(enum.Enum):
    """What to do with a queue message after trying to claim its task."""

    RUN = "run"
    SKIP = "skip"  # final or unknown task: acknowledge and drop the message
    LATER = "later"  # another live consumer holds it: requeue after a pause


@dataclass(frozen=True)
class ClaimResult:
    """A claim's outcome; `claim` is set only for RUN."""

    outcome: ClaimOutcome
    claim: Claim | None = None
    status: str | None = None
    detail: str = ""


def _detail(response: httpx.Response) -> str:
    """The `detail` of a flat JSON error, or the start of the body."""
    try:
        body = response.json()
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])
    except ValueError:
        pass
    return response.text[:300]


class PrivateApiClient:
    """Talks to `/internal/...` with the shared token; network and server errors become PrivateApiError."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        consumer_id: str,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.consumer_id = consumer_id
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"X-Internal-Token": token},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> PrivateApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request; transport failures, 401 and 5xx raise PrivateApiError."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise PrivateApiError(f"{method} {url} failed: {exc!r}") from exc
        self._raise_for_infrastructure(method, url, response)
        return response

    @staticmethod
    def _raise_for_infrastructure(method: str, url: str, response: httpx.Response) -> None:
        """Raise PrivateApiError for answers that say nothing about the task (auth, server errors)."""
        if response.status_code == 401:
            raise PrivateApiError(f"{method} {url}: the private API refused INTERNAL_TOKEN (401)")
        if response.status_code >= 500:
            raise PrivateApiError(f"{method} {url}: {response.status_code} {_detail(response)}")

    def _unexpected(self, method: str, url: str, response: httpx.Response) -> PrivateApiError:
        """An error for an answer the contract does not have."""
        return PrivateApiError(f"{method} {url}: unexpected {response.status_code} {_detail(response)}")

    def _lost(self, uid: str, response: httpx.Response) -> LeaseLost:
        """The task is no longer ours (cancelled, deleted, or held by another consumer)."""
        return LeaseLost(f"task {uid} is no longer held by {self.consumer_id}: {_detail(response)}")

    # ---- calls -------------------------------------------------------------------------------------------

    def claim(self, uid: str) -> ClaimResult:
        """Claim a task for this consumer: RUN with the task and model, SKIP, or LATER."""
        url = f"/internal/tasks/{uid}/claim"
        response = self._request("POST", url, json={"consumer_id": self.consumer_id})
        if response.status_code == 200:
            try:
                return ClaimResult(ClaimOutcome.RUN, claim=Claim.model_validate_json(response.content))
            except ValidationError as exc:
                raise PrivateApiError(f"POST {url}: the answer does not match the contract: {exc}") from exc
        if response.status_code == 404:
            return ClaimResult(ClaimOutcome.SKIP, status=None, detail=_detail(response))
        if response.status_code == 409:
            try:
                status = response.json().get("status")
            except (ValueError, AttributeError):
                status = None
            if status in _FINAL:
                return ClaimResult(ClaimOutcome.SKIP, status=status, detail=_detail(response))
            return ClaimResult(ClaimOutcome.LATER, status=status, detail=_detail(response))
        raise self._unexpected("POST", url, response)

    def heartbeat(self, uid: str) -> str:
        """Renew the lease; returns the task status. LeaseLost on 404/409 or when the task was cancelled."""
        url = f"/internal/tasks/{uid}/heartbeat"
        response = self._request("POST", url, json={"consumer_id": self.consumer_id})
        if response.status_code in (404, 409):
            raise self._lost(uid, response)
        if response.status_code != 200:
            raise self._unexpected("POST", url, response)
        status = str(response.json().get("status"))
        if status == "cancelled":
            raise LeaseLost(f"task {uid} was cancelled")
        return status

    def _download(self, url: str, dest: Path) -> tuple[str, httpx.Headers]:
        """Stream a GET to dest; returns the sha256 of what was written and the headers."""
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for_infrastructure("GET", url, response)
                    if response.status_code == 404:
                        raise LeaseLost(f"GET {url}: {_detail(response)}")
                    raise self._unexpected("GET", url, response)
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                return digest.hexdigest(), response.headers
        except httpx.HTTPError as exc:
            raise PrivateApiError(f"GET {url} failed: {exc!r}") from exc

    def download_input(self, uid: str, dest: Path) -> int:
        """Stream the task's input zip to dest; returns its size. LeaseLost when the task is gone."""
        self._download(f"/internal/tasks/{uid}/input", dest)
        return dest.stat().st_size

    def download_model_zip(self, hid: str, dest: Path, *, expected_sha256: str) -> None:
        """Stream a model's zip to dest and check its sha256 (the zip may have changed since the claim)."""
        sha256, headers = self._download(f"/internal/models/{hid}/zip", dest)
        announced = headers.get("X-Zip-Sha256")
        if sha256 != expected_sha256 or (announced and announced != sha256):
            raise PrivateApiError(
                f"the zip of model {hid!r} changed while it was fetched (expected {expected_sha256[:16]}, "
                f"got {sha256[:16]}); the task is retried"
            )

    def upload_output(self, uid: str, path: Path) -> None:
        """Stream the output zip up. LeaseLost when the task is no longer ours."""

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as source:
                while block := source.read(_CHUNK):
                    yield block

        url = f"/internal/tasks/{uid}/output"
        response = self._request(
            "PUT",
            url,
            content=chunks(),
            headers={"Content-Type": "application/zip", "Content-Length": str(path.stat().st_size)},
        )
        if response.status_code in (404, 409):
            raise self._lost(uid, response)
        if response.status_code != 200:
            raise self._unexpected("PUT", url, response)

    def upload_logs(self, uid: str, text: bytes) -> None:
        """Store the container's (already bounded) log; a task that is gone is not an error here."""
        url = f"/internal/tasks/{uid}/logs"
        response = self._request("PUT", url, content=text, headers={"Content-Type": "text/plain; charset=utf-8"})
        if response.status_code == 404:
            log.info("task %s is gone; its log was not stored", uid)
            return
        if response.status_code != 200:
            raise self._unexpected("PUT", url, response)

    def finish(self, uid: str, *, status: str, reason: str | None, exit_code: int | None) -> bool:
        """Store the final state; False when the task is no longer ours (cancelled, claimed by another, gone)."""
        if status not in ("finished", "failed"):
            raise ValueError(f"a consumer finishes a task as finished or failed, not {status!r}")
        url = f"/internal/tasks/{uid}/finish"
        body = {"consumer_id": self.consumer_id, "status": status, "reason": reason, "exit_code": exit_code}
        response = self._request("POST", url, json=body)
        if response.status_code == 200:
            return True
        if response.status_code in (404, 409):
            log.info("task %s was not finished by %s: %s", uid, self.consumer_id, _detail(response))
            return False
        raise self._unexpected("POST", url, response)

    def release(self, uid: str, *, reason: str) -> None:
        """Put the task back to pending before requeueing it; a task no longer ours is left alone."""
        url = f"/internal/tasks/{uid}/release"
        response = self._request("POST", url, json={"consumer_id": self.consumer_id, "reason": reason})
        if response.status_code in (200, 404, 409):
            return
        raise self._unexpected("POST", url, response)
