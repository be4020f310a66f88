"""`python -m webhooks`: send due webhooks until stopped (SIGTERM or SIGINT), configured by the environment."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from common.settings import configure_logging, settings_or_exit
from webhooks.config import get_settings
from webhooks.service import Sender


def main() -> None:
    """Read the settings, then deliver until stopped."""
    settings = settings_or_exit("webhooks", get_settings)
    configure_logging(settings.log_level)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sender = Sender(settings)
    try:
        sender.run(stop)
    finally:
        sender.close()


if __name__ == "__main__":
    main()
