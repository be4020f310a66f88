"""The fast path serves exactly the relayed calls of the router; everything else is left to FastAPI."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi.routing import APIRoute

from public_api.fast_path import match
from public_api.routes import router

UID = "A" * 22


def _relayed_routes() -> list[APIRoute]:
    """The router's routes (all of them relay a call)."""
    return [route for route in router.routes if isinstance(route, APIRoute)]


def test_every_relayed_route_is_on_the_fast_path():
    routes = _relayed_routes()
    assert len(routes) == 14
    for route in routes:
        path = route.path.replace("{uid}", UID)
        for method in route.methods or ():
            found = match(method, path)
            assert found is not None, (method, path)
            endpoint, params = found
            assert endpoint is route.endpoint
            assert params == ({"uid": UID} if "{uid}" in route.path else {})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/api/tasks/"),
        ("PUT", f"/api/tasks/{UID}"),
        ("GET", f"/api/tasks/{UID}/input"),
        ("GET", "/api/models/m1"),
        ("HEAD", "/api/models/"),
        ("GET", f"/internal/tasks/{UID}/input"),
        ("GET", "/api/tasks//status"),
    ],
)
def test_everything_else_goes_on_to_fastapi(method: str, path: str):
    assert match(method, path) is None


def test_errors_from_the_fast_path_are_flat_json(make_public: Callable[..., httpx.Client]):
    client = make_public(api_keys="k" * 20)
    res = client.get(f"/api/tasks/{UID}")
    assert (res.status_code, res.json(), res.headers["www-authenticate"]) == (
        401,
        {"detail": "an API key is required: send 'Authorization: Bearer <key>'"},
        "Bearer",
    )
    bad_uid = client.get("/api/tasks/not-a-uid/status", headers={"Authorization": "Bearer " + "k" * 20})
    assert (bad_uid.status_code, bad_uid.json()) == (554, {"detail": "task not found"})
    assert client.get("/api/tasks/", headers={"Authorization": "Bearer " + "k" * 20}).status_code == 405
