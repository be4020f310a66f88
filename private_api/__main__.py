"""`python -m private_api`: serve the private API on HOST:PORT; `python -m private_api keys ...`: manage API keys."""

from __future__ import annotations

import sys

from common.serving import serve
from common.settings import configure_logging, settings_or_exit
from private_api.config import get_settings
from private_api.main import create_app


def main() -> None:
    """Run the private API until SIGTERM."""
    settings = settings_or_exit("private API", get_settings)
    configure_logging(settings.log_level)
    serve(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The public API's relay reuses idle connections for up to 60 s: stay open longer than that.
        keep_alive_seconds=75,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["keys"]:
        from private_api.keys_cli import main as keys_main

        sys.exit(keys_main(sys.argv[2:]))
    main()
