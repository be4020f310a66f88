"""The sender's loop: take due deliveries from the private API, send them, report each outcome back."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from common.webhooks import parse_allowed_hosts
from webhooks.config import Settings
from webhooks.sending import Delivery, Outcome, Resolver, resolve, send

__all__ = ["Sender"]

log = logging.getLogger(__name__)


def _body(status: Any) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(status, separators=(",", ":"), sort_keys=True).encode()


class Sender:
    """Delivers webhooks; `run_once` does one round (handy in tests), `run` loops until stopped."""

    def __init__(
        self,
        settings: Settings,
        *,
        private_api: httpx.Client | None = None,
        receivers: httpx.Client | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.settings = settings
        self.allowed = parse_allowed_hosts(settings.webhook_allowed_hosts)
        self.resolver = resolver
        self.batch = settings.webhook_concurrency * 4
        self.private_api = private_api or httpx.Client(
            base_url=settings.private_api_url,
            headers={"X-Internal-Token": settings.internal_token},
            timeout=30.0,
            trust_env=False,
        )
        timeout = httpx.Timeout(settings.webhook_timeout_seconds, connect=settings.webhook_connect_timeout_seconds)
        self.receivers = receivers or httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
        self._pool = ThreadPoolExecutor(max_workers=settings.webhook_concurrency, thread_name_prefix="webhook")

    def close(self) -> None:
        """Stop the worker threads and close the connections."""
        self._pool.shutdown(wait=True)
        self.private_api.close()
        self.receivers.close()

    def due(self) -> list[Delivery]:
        """Deliveries that are due now (the private API leases them to this sender for a while)."""
        response = self.private_api.post("/internal/webhooks/due", params={"limit": self.batch})
        response.raise_for_status()
        return [
            Delivery(uid=item["uid"], url=item["url"], attempt=int(item["attempt"]), body=_body(item["status"]))
            for item in response.json()
        ]

    def _deliver(self, delivery: Delivery) -> Outcome:
        outcome = send(
            self.receivers,
            delivery,
            secret=self.settings.webhook_secret,
            allowed=self.allowed,
            resolver=self.resolver,
        )
        if outcome.ok:
            log.info("task %s: delivered to %s (attempt %d)", delivery.uid, delivery.url, delivery.attempt)
        else:
            log.warning("task %s: attempt %d failed: %s", delivery.uid, delivery.attempt, outcome.error)
        result = {"attempt": delivery.attempt, "ok": outcome.ok, "error": outcome.error, "permanent": outcome.permanent}
        try:
            self.private_api.post(f"/internal/webhooks/{delivery.uid}/result", json=result).raise_for_status()
        except httpx.HTTPError as exc:  # the lease runs out and the delivery is due again
            log.warning("task %s: could not report the outcome: %s", delivery.uid, exc)
        return outcome

    def run_once(self) -> int:
        """Send every delivery that is due now; how many were tried."""
        deliveries = self.due()
        list(self._pool.map(self._deliver, deliveries))
        return len(deliveries)

    def run(self, stop: threading.Event) -> None:
        """Deliver until stop is set; a private API that is away is tried again on the next round."""
        if not self.allowed:
            log.info("webhooks are off (WEBHOOK_ALLOWED_HOSTS is empty): no callback is accepted; idle")
            stop.wait()
            return
        log.info("webhook sender ready (allowed hosts: %s)", ", ".join(sorted(self.allowed)))
        while not stop.is_set():
            try:
                tried = self.run_once()
            except httpx.HTTPError as exc:
                log.warning("cannot take due deliveries from the private API: %s", exc)
                tried = 0
            if tried < self.batch:
                stop.wait(self.settings.webhook_interval_seconds)
