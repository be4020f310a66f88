"""The consumer benchmarks' command line and the names they give what they start."""

from __future__ import annotations

import argparse

TOKEN = "bench-internal-token-0123456789abcdef"
LABEL = {"inference-server.bench": "consumer"}
LABEL_ARG = "inference-server.bench=consumer"


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """Options from the command line (sys.argv when argv is None)."""
    parser = argparse.ArgumentParser(prog="python -m bench consumer_tasks")
    parser.add_argument("--runs", type=int, default=7, help="latency samples of each kind")
    parser.add_argument("--tasks", type=int, default=40, help="one-second tasks for the makespan")
    parser.add_argument("--output-mb", type=int, default=1024, help="output size for the memory benchmark")
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "makespan", "memory"])
    parser.add_argument("--step-times", action="store_true", help="consumers log at DEBUG; print each step's median")
    return parser.parse_args(argv)
