"""Who is calling: the hash of the caller's API key, which the private API (the one authority on keys) checks."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from common.keys import secret_sha256

__all__ = ["Caller", "authenticate"]


@dataclass(frozen=True)
class Caller:
    """The caller of one request: the hex sha256 of the API key it sent, None without one."""

    key_sha256: str | None


def _bearer(request: Request) -> str | None:
    """The token in `Authorization: Bearer <token>`, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request) -> Caller:
    """The caller of this request; only the hash of its key travels on (the key itself is never logged or sent)."""
    token = _bearer(request)
    return Caller(key_sha256=secret_sha256(token) if token is not None else None)
