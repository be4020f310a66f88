"""API key routes (admin): make a key (its secret is answered once), list, revoke, rotate."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Request

from common.keys import KEY_ID_PATTERN, KeyCreated, KeyIn, KeyOut
from common.openapi import answers
from private_api import audit, crud_keys
from private_api.auth import FIRST_KEY_HINT, AdminDep, Authenticated, Keyring
from private_api.deps import InternalAuth, SessionDep
from private_api.errors import Forbidden, KeyNotFound

router = APIRouter(prefix="/api/keys", tags=["keys"], dependencies=[InternalAuth, Authenticated])

KeyId = Annotated[str, Path(description="the key's id, e.g. k0123456789abcdef")]


_KEY_ID_RE = re.compile(KEY_ID_PATTERN)


def _check_id(key_id: str) -> str:
    """The id, or KeyNotFound when it cannot be one."""
    if not _KEY_ID_RE.fullmatch(key_id):
        raise KeyNotFound(f"no API key {key_id!r}")
    return key_id


@router.post("", response_model=KeyCreated, responses=answers(401, 403, 422))
def create_key(key_in: KeyIn, request: Request, session: SessionDep, caller: AdminDep) -> KeyCreated:
    """Make an API key; the answer holds its secret, the only time it is shown."""
    keyring: Keyring = request.app.state.keyring
    if keyring.is_open():
        # Anyone may call an open service: the first admin key is made on the host, never through the API.
        raise Forbidden(
            f"no API key exists yet, so the service is open; make the first admin key on the host: {FIRST_KEY_HINT}"
        )
    created = crud_keys.create_key(
        session,
        name=key_in.name,
        admin=key_in.admin,
        expires_at=crud_keys.expiry(key_in.expires_in_days),
        max_queued_tasks=key_in.max_queued_tasks,
        max_running_tasks=key_in.max_running_tasks,
        created_by=caller.key_id,
    )
    audit.record(session, caller, "key.create", created.id, name=created.name, admin=created.admin)
    session.commit()
    return created


@router.get("", response_model=list[KeyOut], responses=answers(401, 403))
def list_keys(session: SessionDep, caller: AdminDep) -> list[KeyOut]:
    """Every key in the database with its state, expiry and last use; never a secret (bootstrap keys not listed)."""
    return [crud_keys.key_out(key) for key in crud_keys.list_keys(session)]


@router.delete("/{key_id}", response_model=KeyOut, responses=answers(401, 403, 404))
def revoke_key(key_id: KeyId, session: SessionDep, caller: AdminDep) -> KeyOut:
    """Revoke a key: it answers 401 from the next call on; its tasks stay."""
    key = crud_keys.get_key(session, _check_id(key_id))
    already = key.revoked_at is not None
    crud_keys.revoke_key(session, key)
    if not already:
        audit.record(session, caller, "key.revoke", key.id, name=key.name)
    session.commit()
    return crud_keys.key_out(key)


@router.post("/{key_id}/rotate", response_model=KeyCreated, responses=answers(401, 403, 404, 409))
def rotate_key(key_id: KeyId, session: SessionDep, caller: AdminDep) -> KeyCreated:
    """A new secret for the same key (its tasks stay its own); the old secret answers 401 from now on."""
    key = crud_keys.get_key(session, _check_id(key_id))
    rotated = crud_keys.rotate_key(session, key)
    audit.record(session, caller, "key.rotate", key.id, name=key.name)
    session.commit()
    return rotated
