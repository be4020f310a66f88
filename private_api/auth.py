"""Who is calling: the Caller every /api route takes (owner, key, admin, quotas)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header

__all__ = ["Caller", "CallerDep", "current_caller"]


@dataclass(frozen=True)
class Caller:
    """The caller of one request.

    owner: whose tasks it sees and makes (None: not scoped, e.g. an internal call or a service without keys).
    key_id, key_name: the API key used (for the audit), None without one.
    public: True when the call came through the public API.
    max_queued_tasks, max_running_tasks: the key's quotas (None: the defaults).
    """

    owner: str | None
    key_id: str | None = None
    key_name: str | None = None
    admin: bool = True
    public: bool = False
    max_queued_tasks: int | None = None
    max_running_tasks: int | None = None

    def sees(self, task_owner: str | None) -> bool:
        """True when this caller may see and change a task of that owner."""
        return self.owner is None or task_owner == self.owner


async def current_caller(x_owner: Annotated[str | None, Header(max_length=128)] = None) -> Caller:
    """The caller as the internal headers name it: `X-Owner` scopes the tasks to that owner."""
    return Caller(owner=x_owner or None, key_id=x_owner or None)


CallerDep = Annotated[Caller, Depends(current_caller)]
