"""The SDK's API key calls (admin keys only): make, list, revoke and rotate keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from inference_client.errors import InferenceServerError
from inference_client.http import HttpClient
from inference_client.results import _Result

__all__ = ["ApiKey", "KeysApi"]


class ApiKey(_Result):
    """An API key as the server describes it; `secret` only in the answer that made or rotated it."""

    id: str
    name: str
    admin: bool = False
    state: str = "active"
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    max_queued_tasks: int | None = None
    max_running_tasks: int | None = None
    created_by: str | None = None
    secret: str | None = None


class KeysApi(HttpClient):
    """`POST/GET /api/keys/`, `DELETE /api/keys/{id}`, `POST /api/keys/{id}/rotate`."""

    def create_key(
        self,
        name: str,
        *,
        admin: bool = False,
        expires_in_days: float | None = None,
        max_queued_tasks: int | None = None,
        max_running_tasks: int | None = None,
    ) -> ApiKey:
        """Make a key; its `secret` is in this answer only (keep it: the server stores only its hash)."""
        body: dict[str, Any] = {"name": name, "admin": admin}
        extra = {
            "expires_in_days": expires_in_days,
            "max_queued_tasks": max_queued_tasks,
            "max_running_tasks": max_running_tasks,
        }
        body.update({k: v for k, v in extra.items() if v is not None})
        return ApiKey.model_validate(self._json(self._request("POST", "/api/keys/", json=body)))

    def list_keys(self) -> list[ApiKey]:
        """Every key (state, expiry, last use), never a secret."""
        data = self._json(self._request("GET", "/api/keys/"))
        if not isinstance(data, list):
            raise InferenceServerError(f"expected a list of keys, got {str(data)[:200]}")
        return [ApiKey.model_validate(item) for item in data]

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key: every call with it answers 401 from now on."""
        return ApiKey.model_validate(self._json(self._request("DELETE", f"/api/keys/{self._hid(key_id)}")))

    def rotate_key(self, key_id: str) -> ApiKey:
        """A new secret for the same key (its tasks stay its own); the old secret stops working at once."""
        return ApiKey.model_validate(self._json(self._request("POST", f"/api/keys/{self._hid(key_id)}/rotate")))
