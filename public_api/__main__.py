"""`python -m public_api`: serve the public API with uvicorn, configured by the environment."""

from __future__ import annotations

import importlib.util
import sys

import uvicorn
from pydantic import ValidationError

from common.settings import configure_logging
from public_api.config import get_settings
from public_api.main import create_app


def fast_server_options() -> tuple[str, str]:
    """uvicorn's uvloop event loop and httptools parser when installed (the `public-api` extra), else its defaults."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "auto"
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "auto"
    return loop, http


def main() -> None:
    """Read the settings, then serve until stopped."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        sys.exit(f"public API: bad configuration in the environment:\n{exc}")
    configure_logging(settings.log_level)
    loop, http = fast_server_options()
    uvicorn.run(
        create_app(settings),
        loop=loop,
        http=http,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        forwarded_allow_ips="*",
        # Longer than Traefik's idle timeout towards backends (90 s): Traefik, not we, closes an idle connection,
        # so it never sends a request on one we are closing.
        timeout_keep_alive=100,
    )


if __name__ == "__main__":
    main()
