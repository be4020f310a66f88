"""What the public chain benchmark compares, its goals, and its command line."""

from __future__ import annotations

import argparse

GOAL_POLL_RATIO = 0.5
GOAL_TRANSFER_RATIO = 0.7
GOAL_RSS_GROWTH_MIB = 64.0
MODEL_HID = "bench"
PATHS = ("direct", "public", "chain")
PATH_NAMES = {
    "direct": "private API directly (HTTP)",
    "public": "public API alone (HTTP)",
    "chain": "Traefik + public API (HTTPS)",
}
LABEL = "inference-bench"


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """Options from the command line (sys.argv when argv is None); argparse exits with a clear message on bad values."""
    import bench.public_chain

    parser = argparse.ArgumentParser(
        prog="python -m bench public_chain", description=(bench.public_chain.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the uploaded and downloaded zip")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each figure (the median is reported)")
    parser.add_argument("--poll-repeat", type=int, default=7, help="measurements of each polling figure")
    parser.add_argument("--polls", type=int, default=500, help="polls per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="polling threads for the concurrent figure")
    args = parser.parse_args(argv)
    if min(args.size_mib, args.repeat, args.poll_repeat, args.concurrency) < 1 or args.polls < 10:
        parser.error("--size-mib, --repeat, --poll-repeat and --concurrency must be at least 1, --polls at least 10")
    return args
