"""`python -m public_api`: serve the public API with uvicorn, configured by the environment."""

from __future__ import annotations

from common.serving import serve
from common.settings import configure_logging, settings_or_exit
from public_api.config import get_settings
from public_api.main import create_app


def main() -> None:
    """Read the settings, then serve until stopped."""
    settings = settings_or_exit("public API", get_settings)
    configure_logging(settings.log_level)
    serve(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Longer than Traefik's idle timeout towards backends (90 s): Traefik, not we, closes an idle connection,
        # so it never sends a request on one we are closing.
        keep_alive_seconds=100,
        proxy_headers=True,
        forwarded_allow_ips="*",
    )


if __name__ == "__main__":
    main()
