"""Calls about consumer instances: their heartbeats, their goodbyes, and which of their containers' leases are live."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam

from private_api import crud_consumers, leases
from private_api.deps import InternalAuth, SessionDep
from private_api.errors import UnknownConsumer
from private_api.schemas import ConsumerHeartbeatIn, LeasesCheckIn, LeasesCheckOut

router = APIRouter(prefix="/internal", tags=["consumers"], dependencies=[InternalAuth])


async def _lease_rule(request: Request) -> leases.LeaseRule:
    rule: leases.LeaseRule = request.app.state.lease_rule
    return rule


LeaseRuleDep = Annotated[leases.LeaseRule, Depends(_lease_rule)]
InstanceId = Annotated[str, PathParam(min_length=1, max_length=256)]


@router.post("/consumers/{instance_id}/heartbeat")
def consumer_heartbeat(instance_id: InstanceId, body: ConsumerHeartbeatIn, session: SessionDep) -> dict[str, str]:
    """A consumer instance is alive: record what it reads, its GPU's state and its free disk."""
    crud_consumers.record_heartbeat(session, instance_id=instance_id, beat=body)
    return {"status": "ok"}


@router.delete("/consumers/{instance_id}")
def consumer_gone(instance_id: InstanceId, session: SessionDep) -> dict[str, str]:
    """A consumer instance shut down cleanly; 404 when it was not known."""
    if not crud_consumers.forget(session, instance_id=instance_id):
        raise UnknownConsumer(f"no consumer instance {instance_id!r}")
    return {"detail": f"consumer instance {instance_id!r} forgotten"}


@router.post("/leases/check", response_model=LeasesCheckOut)
def leases_check(body: LeasesCheckIn, session: SessionDep, rule: LeaseRuleDep) -> LeasesCheckOut:
    """For each (uid, consumer_id, attempt), in order: does that instance hold that attempt under a live lease?"""
    asked = [(lease.uid, lease.consumer_id, lease.attempt) for lease in body.leases]
    return LeasesCheckOut(live=leases.check_leases(session, leases=asked, rule=rule))
