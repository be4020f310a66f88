"""`inference-server`: the command-line client (models, tasks, health) built on `InferenceClient`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from common.settings import is_true
from inference_client.cli_commands import Cli
from inference_client.cli_parser import (
    ENV_API_KEY,
    ENV_CA_CERT,
    ENV_INSECURE,
    ENV_INTERNAL_TOKEN,
    ENV_URL,
    UsageError,
    build_parser,
)
from inference_client.client import InferenceClient
from inference_client.errors import EXIT_CODES, InferenceServerError, TaskFailedError

__all__ = ["ENV_API_KEY", "ENV_CA_CERT", "ENV_INSECURE", "ENV_INTERNAL_TOKEN", "ENV_URL", "build_parser", "main"]


def _client_from_args(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> InferenceClient:
    """Build the client from flags, falling back to the environment."""
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise UsageError(f"no server URL: pass --url or set {ENV_URL}")
    api_key = args.api_key or os.environ.get(ENV_API_KEY) or None
    internal_token = args.internal_token or os.environ.get(ENV_INTERNAL_TOKEN) or None
    ca_cert = args.ca_cert or os.environ.get(ENV_CA_CERT) or None
    insecure = args.insecure or is_true(os.environ.get(ENV_INSECURE))
    if insecure and ca_cert:
        raise UsageError("give either --ca-cert or --insecure, not both")
    if ca_cert and not Path(ca_cert).is_file():
        raise UsageError(f"CA certificate file not found: {ca_cert}")
    verify: bool | str = False if insecure else (ca_cert or True)
    try:
        return InferenceClient(
            url,
            api_key=api_key,
            internal_token=internal_token,
            verify=verify,
            timeout=httpx.Timeout(args.http_timeout),
            transport=transport,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Entry point of `inference-server`; returns the exit code (`transport` lets tests swap the network)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = bool(args.json)
    try:
        with _client_from_args(args, transport) as client:
            return Cli(args, client).dispatch()
    except UsageError as exc:
        if as_json:
            print(json.dumps({"error": "UsageError", "detail": str(exc)}))
        parser.print_usage(sys.stderr)
        print(f"inference-server: error: {exc}", file=sys.stderr)
        return EXIT_CODES["usage"]
    except InferenceServerError as exc:
        if as_json:
            print(json.dumps(exc.to_dict(), indent=2, default=str))
        print(f"inference-server: {exc.message}", file=sys.stderr)
        if isinstance(exc, TaskFailedError) and exc.log_tail:
            print(f"--- exit code {exc.model_exit_code}; last log lines ---\n{exc.log_tail}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except OSError as exc:
        if as_json:
            print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}))
        print(f"inference-server: {exc}", file=sys.stderr)
        return EXIT_CODES["error"]


if __name__ == "__main__":
    sys.exit(main())
