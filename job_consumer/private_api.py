"""The consumer's client of the private API's consumer calls (with private_api_http.py, all the HTTP here).

Task calls are retried with backoff (tenacity) on connection errors and 5xx for PRIVATE_API_RETRY_SECONDS, so a
private API restarted mid-task finds the result kept and stored at the same attempt; the periodic calls (lease
heartbeat, consumer heartbeat, lease check) are tried once and simply tried again next time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from job_consumer.errors import LeaseLost, ModelFailed, PrivateApiError
from job_consumer.private_api_http import HttpBase, Transient, detail, route_missing
from job_consumer.schemas import Claim, ClaimOutcome, ClaimResult, Progress

__all__ = ["ClaimOutcome", "ClaimResult", "PrivateApiClient"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_MAX_REASON = 10_000  # the longest failure reason the private API takes


class PrivateApiClient(HttpBase):
    """Talks to `/internal/...` with the shared token as one consumer instance."""

    # ---- task calls --------------------------------------------------------------------------------------

    def claim(self, uid: str) -> ClaimResult:
        """Claim a task for this instance: RUN with the task and model, or SKIP (ack and drop the message)."""
        url = f"/internal/tasks/{uid}/claim"
        body = {"consumer_id": self.instance_id, "consumer_name": self.consumer_name}
        response = self._retrying(lambda: self._request("POST", url, json=body))
        if response.status_code == 200:
            try:
                return ClaimResult(ClaimOutcome.RUN, claim=Claim.model_validate_json(response.content))
            except ValidationError as exc:
                raise PrivateApiError(f"POST {url}: the answer does not match the contract: {exc}") from exc
        if response.status_code in (404, 409):
            try:
                status = response.json().get("status")
            except (ValueError, AttributeError):
                status = None
            # Final, running under a live lease (any instance, this name too), or not due yet: the private API
            # republishes it when that changes, so this delivery is dropped rather than requeued.
            return ClaimResult(ClaimOutcome.SKIP, status=status, detail=detail(response))
        raise self._unexpected("POST", url, response)

    def heartbeat(self, uid: str, attempt: int, *, phase: str | None = None, progress: Progress | None = None) -> str:
        """Renew the lease with phase and progress; the task status. LeaseLost on 404/409 or once cancelled."""
        url = f"/internal/tasks/{uid}/heartbeat"
        body: dict[str, Any] = {**self._holder(attempt)}
        if phase is not None:
            body["phase"] = phase
        if progress is not None:
            body.update(progress=progress.fraction, progress_message=progress.message)
        response = self._request("POST", url, json=body, timeout=10.0)
        if response.status_code in (404, 409):
            raise self._lost(uid, response)
        if response.status_code != 200:
            raise self._unexpected("POST", url, response)
        status = str(response.json().get("status"))
        if status == "cancelled":
            raise LeaseLost(f"task {uid} was cancelled")
        return status

    def _download_once(self, url: str, dest: Path) -> tuple[str, httpx.Headers]:
        """Stream a GET to dest; returns the sha256 of what was written and the headers."""
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for_infrastructure("GET", url, response)
                    if response.status_code == 404:
                        raise LeaseLost(f"GET {url}: {detail(response)}")
                    raise self._unexpected("GET", url, response)
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                return digest.hexdigest(), response.headers
        except httpx.HTTPError as exc:
            raise Transient(f"GET {url} failed: {exc!r}") from exc

    def download_input(self, uid: str, dest: Path) -> str:
        """Stream the task's input zip to dest; returns its sha256. LeaseLost when the task is gone."""
        sha256, _headers = self._retrying(lambda: self._download_once(f"/internal/tasks/{uid}/input", dest))
        return sha256

    def download_model_zip(self, hid: str, dest: Path, *, expected_sha256: str) -> None:
        """Stream the zip of the model's version the claim named to dest and check its sha256."""
        url = f"/internal/models/{hid}/zip" + (f"?sha256={expected_sha256}" if expected_sha256 else "")
        sha256, headers = self._retrying(lambda: self._download_once(url, dest))
        announced = headers.get("X-Zip-Sha256")
        if sha256 != expected_sha256 or (announced and announced != sha256):
            raise PrivateApiError(
                f"the zip of model {hid!r} changed while it was fetched (expected {expected_sha256[:16]}, "
                f"got {sha256[:16]}); the task is retried"
            )

    def upload_output(self, uid: str, attempt: int, path: Path) -> str:
        """Stream the output zip up (again from the file on each try); its sha256. LeaseLost when no longer ours."""
        digests: list[Any] = []

        def chunks() -> Iterator[bytes]:
            digest = hashlib.sha256()
            digests.append(digest)
            with open(path, "rb") as source:
                while block := source.read(_CHUNK):
                    digest.update(block)
                    yield block

        url = f"/internal/tasks/{uid}/output"
        response = self._retrying(
            lambda: self._request(
                "PUT",
                url,
                params=self._holder(attempt),
                content=chunks(),
                headers={"Content-Type": "application/zip", "Content-Length": str(path.stat().st_size)},
            )
        )
        if response.status_code == 413:
            raise ModelFailed(f"the output zip is larger than the model's max_output_size: {detail(response)}")
        if response.status_code in (404, 409):
            raise self._lost(uid, response)
        if response.status_code != 200:
            raise self._unexpected("PUT", url, response)
        return str(digests[-1].hexdigest())  # of the try that was stored

    def upload_logs(self, uid: str, attempt: int, text: bytes) -> None:
        """Store the container's (already bounded) log; a task that is gone or taken over is not an error here."""
        url = f"/internal/tasks/{uid}/logs"
        response = self._retrying(
            lambda: self._request(
                "PUT",
                url,
                params=self._holder(attempt),
                content=text,
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
        )
        if response.status_code in (404, 409):
            log.info("the log of task %s was not stored: %s", uid, detail(response))
            return
        if response.status_code != 200:
            raise self._unexpected("PUT", url, response)

    def finish(
        self,
        uid: str,
        attempt: int,
        *,
        status: str,
        reason: str | None,
        exit_code: int | None,
        provenance: dict[str, Any] | None = None,
    ) -> bool:
        """Store the final state (and what produced it); False when the task is no longer ours."""
        if status not in ("finished", "failed"):
            raise ValueError(f"a consumer finishes a task as finished or failed, not {status!r}")
        url = f"/internal/tasks/{uid}/finish"
        kept = None if reason is None else reason[:_MAX_REASON]
        body: dict[str, Any] = {**self._holder(attempt), "status": status, "reason": kept, "exit_code": exit_code}
        if provenance is not None:
            body["provenance"] = provenance
        response = self._retrying(lambda: self._request("POST", url, json=body))
        if response.status_code == 200:
            return True
        if response.status_code in (404, 409):
            log.info("task %s was not finished by %s: %s", uid, self.instance_id, detail(response))
            return False
        raise self._unexpected("POST", url, response)

    def release(self, uid: str, attempt: int, *, reason: str, infrastructure: bool) -> bool:
        """Give the task back to pending (the private API republishes it); False when it is no longer ours."""
        url = f"/internal/tasks/{uid}/release"
        body = {**self._holder(attempt), "reason": reason[:1000], "infrastructure": infrastructure}
        response = self._retrying(lambda: self._request("POST", url, json=body))
        if response.status_code == 200:
            return True
        if response.status_code in (404, 409):
            return False
        raise self._unexpected("POST", url, response)

    # ---- consumer calls (tried once; the next round tries again) -----------------------------------------

    def consumer_heartbeat(self, payload: dict[str, Any]) -> bool | None:
        """Report this instance (name, queues, GPU and disk state); None when the private API lacks the route."""
        url = f"/internal/consumers/{self.instance_id}/heartbeat"
        response = self._request("POST", url, json={"name": self.consumer_name, **payload}, timeout=5.0)
        if route_missing(response):
            return None
        return response.status_code == 200

    def consumer_gone(self) -> None:
        """Tell the private API this instance stops (clean shutdown)."""
        try:
            self._request("DELETE", f"/internal/consumers/{self.instance_id}", timeout=5.0)
        except PrivateApiError as exc:
            log.info("could not say goodbye to the private API: %s", exc)

    def leases_check(self, leases: list[tuple[str, str, int]]) -> list[bool] | None:
        """Which (uid, instance, attempt) leases are live; None when the private API lacks the route."""
        body = {"leases": [{"uid": uid, "consumer_id": cid, "attempt": n} for uid, cid, n in leases]}
        response = self._request("POST", "/internal/leases/check", json=body, timeout=10.0)
        if route_missing(response):
            return None
        if response.status_code != 200:
            raise self._unexpected("POST", "/internal/leases/check", response)
        live = response.json().get("live")
        if not isinstance(live, list) or len(live) != len(leases):
            raise PrivateApiError("POST /internal/leases/check: the answer does not match the question")
        return [bool(item) for item in live]
