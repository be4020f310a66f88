"""Serving an API with uvicorn, the same way for both APIs."""

from __future__ import annotations

import importlib.util
from typing import Any

import uvicorn

__all__ = ["serve"]


def serve(app: Any, *, host: str, port: int, log_level: str, keep_alive_seconds: int, **options: Any) -> None:
    """Run app until SIGTERM, on uvloop and httptools when they are installed (the API extras bring them)."""
    uvicorn.run(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") is not None else "auto",
        http="httptools" if importlib.util.find_spec("httptools") is not None else "auto",
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_keep_alive=keep_alive_seconds,
        **options,
    )
