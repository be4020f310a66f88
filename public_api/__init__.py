"""The public API: a relay that exposes exactly the public calls of the private API, behind Traefik."""

__all__ = ["create_app"]

from public_api.main import create_app
