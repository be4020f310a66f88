"""`python -m private_api`: serve the private API with uvicorn on HOST:PORT."""

from __future__ import annotations

import uvicorn

from common.settings import configure_logging
from private_api.config import get_settings
from private_api.main import create_app


def main() -> None:
    """Run the private API until SIGTERM."""
    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
