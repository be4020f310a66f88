"""`python -m private_api`: serve the private API with uvicorn on HOST:PORT."""

from __future__ import annotations

import importlib.util

import uvicorn

from common.settings import configure_logging
from private_api.config import get_settings
from private_api.main import create_app


def fast_server_options() -> tuple[str, str]:
    """uvicorn's uvloop event loop and httptools parser when installed (the `private-api` extra), else its defaults."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "auto"
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "auto"
    return loop, http


def main() -> None:
    """Run the private API until SIGTERM."""
    settings = get_settings()
    configure_logging(settings.log_level)
    loop, http = fast_server_options()
    uvicorn.run(
        create_app(settings),
        loop=loop,
        http=http,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
        # The public API's relay reuses idle connections for up to 60 s (public_api/upstream.py): stay open longer.
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
