"""The benchmark's results: medians and ratios against the same run's baselines, as JSON and a table."""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from bench.common import MIB, median, print_table
from bench.private_api.options import GOAL_POLL_RATIO, GOAL_RSS_GROWTH_MIB, GOAL_TRANSFER_RATIO, Options
from bench.private_api.polling import PollRun
from bench.private_api.transfers import TransferRun


def summarize(
    options: Options, size: int, transfers: list[TransferRun], polls: list[PollRun], extra: dict[str, Any]
) -> dict[str, Any]:
    """Medians, ratios against the same run's baselines, and whether each goal is met."""
    mib = size / MIB
    upload_ratio = median(t.copy_fsync_s / t.upload_s for t in transfers)
    download_ratio = median(t.copy_s / t.download_s for t in transfers)
    poll_ratio = median(p.api_per_s / p.bare_per_s for p in polls)
    upload_rss = max(t.upload_rss_growth for t in transfers) / MIB
    download_rss = max(t.download_rss_growth for t in transfers) / MIB
    return {
        "benchmark": "private_api",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "uvicorn_extras": [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)],
        },
        "options": {**asdict(options), "workdir": str(options.workdir)},
        **extra,
        "zip_bytes": size,
        "upload": {
            "api_mib_s": median(mib / t.upload_s for t in transfers),
            "copy_fsync_mib_s": median(mib / t.copy_fsync_s for t in transfers),
            "ratio": upload_ratio,
            "ratio_vs_copy_without_fsync": median(t.copy_s / t.upload_s for t in transfers),
            "goal_ratio": GOAL_TRANSFER_RATIO,
            "met": upload_ratio >= GOAL_TRANSFER_RATIO,
            "peak_rss_growth_mib": upload_rss,
        },
        "download": {
            "api_mib_s": median(mib / t.download_s for t in transfers),
            "copy_mib_s": median(mib / t.copy_s for t in transfers),
            "ratio": download_ratio,
            "goal_ratio": GOAL_TRANSFER_RATIO,
            "met": download_ratio >= GOAL_TRANSFER_RATIO,
            "peak_rss_growth_mib": download_rss,
        },
        "output_put": {"api_mib_s": median(mib / t.output_put_s for t in transfers)},
        "rss": {
            "peak_growth_mib": max(upload_rss, download_rss),
            "goal_mib": GOAL_RSS_GROWTH_MIB,
            "met": max(upload_rss, download_rss) < GOAL_RSS_GROWTH_MIB,
        },
        "poll": {
            "api_per_s": median(p.api_per_s for p in polls),
            "bare_per_s": median(p.bare_per_s for p in polls),
            "ratio": poll_ratio,
            "api_cpu_us_per_request": median(p.api_cpu_us for p in polls),
            "bare_cpu_us_per_request": median(p.bare_cpu_us for p in polls),
            "cpu_ratio": median(p.bare_cpu_us / p.api_cpu_us for p in polls),
            "goal_ratio": GOAL_POLL_RATIO,
            "met": poll_ratio >= GOAL_POLL_RATIO,
        },
        "runs": {"transfers": [asdict(t) for t in transfers], "polls": [asdict(p) for p in polls]},
    }


def report(results: dict[str, Any]) -> None:
    """Print the results as a markdown table."""
    up, down, rss, poll = results["upload"], results["download"], results["rss"], results["poll"]
    size = f"{results['zip_bytes'] / MIB:.0f} MiB zip"

    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    print(
        f"\nPrivate API, {results['date']}, {results['machine']['cpus']} CPUs, median of {results['options']['runs']} "
        f"runs, load generator {results['load_generator']}, {results['tasks_in_database']:,} tasks in the database\n"
    )
    print_table(
        ("measurement", "private API", "baseline (same run)", "ratio", "goal", "met"),
        [
            (
                f"upload {size} (POST /api/tasks/)",
                f"{up['api_mib_s']:.0f} MiB/s",
                f"copy + fsync {up['copy_fsync_mib_s']:.0f} MiB/s",
                f"{up['ratio']:.2f}",
                ">= 0.50",
                met(up["met"]),
            ),
            (
                f"download {size} (GET /api/tasks/{{uid}})",
                f"{down['api_mib_s']:.0f} MiB/s",
                f"copy {down['copy_mib_s']:.0f} MiB/s",
                f"{down['ratio']:.2f}",
                ">= 0.50",
                met(down["met"]),
            ),
            (
                "peak RSS growth of the API (upload / download)",
                f"{up['peak_rss_growth_mib']:.1f} / {down['peak_rss_growth_mib']:.1f} MiB",
                "",
                "",
                "< 64 MiB",
                met(rss["met"]),
            ),
            (
                f"poll a pending task (551), {results['tasks_in_database']:,} tasks",
                f"{poll['api_per_s']:.0f} req/s",
                f"bare FastAPI {poll['bare_per_s']:.0f} req/s",
                f"{poll['ratio']:.2f}",
                ">= 0.60",
                met(poll["met"]),
            ),
        ],
    )
    print(
        f"\nAlso: output upload (PUT /internal/tasks/{{uid}}/output) {results['output_put']['api_mib_s']:.0f} MiB/s; "
        f"server CPU per poll {poll['api_cpu_us_per_request']:.0f} us (private API) vs "
        f"{poll['bare_cpu_us_per_request']:.0f} us (bare FastAPI): CPU ratio {poll['cpu_ratio']:.2f}"
    )
