"""Calls for admin keys: the audit trail."""

from __future__ import annotations

from inference_client.http import HttpClient
from inference_client.results import AuditPage

__all__ = ["AdminCalls"]


class AdminCalls(HttpClient):
    """What an admin key may read besides models and tasks (InferenceClient has these methods)."""

    def list_audit(
        self,
        *,
        action: str | None = None,
        key_id: str | None = None,
        target: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> AuditPage:
        """A page of the audit trail, newest first: who (key id and name) did what, to what, when.

        Filters: `action` (e.g. model.update, task.cancel), `key_id`, `target` (key id, model id or task uid).
        Raises ForbiddenError (403) for a key that is not an admin key.
        """
        params = {"limit": str(limit), "offset": str(offset)}
        params.update({k: v for k, v in {"action": action, "key_id": key_id, "target": target}.items() if v})
        return AuditPage.model_validate(self._json(self._request("GET", "/api/audit/", params=params)))
