"""The plumbing of the consumer's client of the private API: the connection pool, retries, error answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import tenacity

from job_consumer.errors import LeaseLost, PrivateApiError

__all__ = ["HttpBase", "Transient", "detail", "route_missing"]

log = logging.getLogger("job_consumer.private_api")

T = TypeVar("T")


class Transient(PrivateApiError):
    """A connection error or a 5xx: worth trying again."""


def detail(response: httpx.Response) -> str:
    """The `detail` of a flat JSON error, or the start of the body."""
    try:
        body = response.json()
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])
    except ValueError:
        pass
    return response.text[:300]


def route_missing(response: httpx.Response) -> bool:
    """True for FastAPI's 404 of a route this private API does not have (an older version)."""
    return response.status_code in (404, 405) and detail(response) in ("Not Found", "Method Not Allowed")


class HttpBase:
    """The HTTP side of PrivateApiClient: one pool with the shared token, retried calls, error answers."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        instance_id: str,
        consumer_name: str,
        timeout: float = 60.0,
        retry_seconds: float = 900.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.consumer_name = consumer_name
        self.retry_seconds = retry_seconds
        # Set when the consumer must stop now (grace period over): retries end at once.
        self.abandon = threading.Event()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"X-Internal-Token": token},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    @property
    def consumer_id(self) -> str:
        """The instance id: what the private API records as the task's consumer_id."""
        return self.instance_id

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ---- plumbing ----------------------------------------------------------------------------------------

    def _retrying(self, call: Callable[[], T]) -> T:
        """call(), tried again with backoff on transient errors until the retry window ends."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Transient),
            stop=tenacity.stop_after_delay(self.retry_seconds) | tenacity.stop_when_event_set(self.abandon),
            wait=tenacity.wait_exponential(multiplier=0.5, max=15),
            before_sleep=lambda state: log.warning(
                "the private API failed (%s); trying again", state.outcome.exception() if state.outcome else "?"
            ),
            reraise=True,
        )
        return retrying(call)

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request once; transport failures and 5xx raise Transient, 401 PrivateApiError."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise Transient(f"{method} {url} failed: {exc!r}") from exc
        self._raise_for_infrastructure(method, url, response)
        return response

    @staticmethod
    def _raise_for_infrastructure(method: str, url: str, response: httpx.Response) -> None:
        """Raise for answers that say nothing about the task (auth, server errors)."""
        if response.status_code == 401:
            raise PrivateApiError(f"{method} {url}: the private API refused INTERNAL_TOKEN (401)")
        if response.status_code >= 500:
            raise Transient(f"{method} {url}: {response.status_code} {detail(response)}")

    def _holder(self, attempt: int) -> dict[str, str | int]:
        """Who holds which attempt: sent with every task call."""
        return {"consumer_id": self.instance_id, "attempt": attempt}

    @staticmethod
    def _unexpected(method: str, url: str, response: httpx.Response) -> PrivateApiError:
        """An error for an answer the contract does not have."""
        return PrivateApiError(f"{method} {url}: unexpected {response.status_code} {detail(response)}")

    def _lost(self, uid: str, response: httpx.Response) -> LeaseLost:
        """The task is no longer ours (cancelled, deleted, or held by another consumer)."""
        return LeaseLost(f"task {uid} is no longer held by {self.instance_id}: {detail(response)}")
