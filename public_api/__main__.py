"""`python -m public_api`: serve the public API with uvicorn, configured by the environment."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from common.settings import configure_logging
from public_api.config import get_settings
from public_api.main import create_app


def main() -> None:
    """Read the settings, then serve until stopped."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        sys.exit(f"public API: bad configuration in the environment:\n{exc}")
    configure_logging(settings.log_level)
    # httpx logs every relayed request at INFO; uvicorn's access log already says what was asked.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
