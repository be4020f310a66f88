"""Optional API keys: who is calling, and may they post models."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from public_api.config import Settings
from public_api.errors import RelayError

__all__ = ["Caller", "authenticate"]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    """The caller of one request: their owner id (None when keys are off) and whether they are an admin."""

    owner: str | None
    admin: bool


def _bearer(request: Request) -> str | None:
    """The token in `Authorization: Bearer <token>`, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request, settings: Settings) -> Caller:
    """The caller of this request; 401 when keys are configured and none (or a wrong one) is given."""
    if not settings.keys_required:
        return Caller(owner=None, admin=True)
    token = _bearer(request)
    if token is None:
        raise RelayError(401, "an API key is required: send 'Authorization: Bearer <key>'", _CHALLENGE)
    owner = None
    # Compare against every key in constant time so timing tells nothing about which prefix matched.
    for key, key_owner in settings.owner_of_key.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            owner = key_owner
    if owner is None:
        raise RelayError(401, "the API key is not valid", _CHALLENGE)
    admin = any(hmac.compare_digest(key.encode(), token.encode()) for key in settings.admin_keys)
    return Caller(owner=owner, admin=admin)
