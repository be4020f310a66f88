"""The benchmark's results: medians, ratios chain/direct against the goals, and where the CPU time goes."""

from __future__ import annotations

import argparse
import os
from typing import Any

from bench.common import MIB, median, print_table
from bench.public_chain.measure import Samples
from bench.public_chain.options import GOAL_POLL_RATIO, GOAL_RSS_GROWTH_MIB, GOAL_TRANSFER_RATIO, PATH_NAMES, PATHS


def summarize(samples: dict[str, list[tuple[float, dict[str, float]]]]) -> dict[str, dict[str, float]]:
    """The median rate of each path and the median CPU cost per process."""
    summary: dict[str, dict[str, float]] = {}
    for path, runs in samples.items():
        names = runs[0][1].keys()
        summary[path] = {"rate": round(median(rate for rate, _ in runs), 1)}
        summary[path].update({f"cpu_ms_{name}": round(median(cpu[name] for _, cpu in runs), 3) for name in names})
    return summary


def verdict(ratio: float, goal: float, higher_is_better: bool = True) -> str:
    """'met' or 'missed' against a goal."""
    return "met" if (ratio >= goal if higher_is_better else ratio < goal) else "missed"


def results(
    args: argparse.Namespace,
    traefik: bool,
    polls: Samples,
    concurrent: Samples,
    uploads: Samples,
    downloads: Samples,
    growth: list[int],
) -> dict[str, Any]:
    """The medians of every figure and the run's settings, as written to bench/results/public_chain.json."""
    return {
        "through": "Traefik (HTTPS) + public API" if traefik else "public API (no Traefik image: no TLS)",
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "poll_repeat": args.poll_repeat,
        "polls": args.polls,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "poll": summarize(polls),
        "poll_concurrent": summarize(concurrent),
        "upload_mib_s": summarize(uploads),
        "download_mib_s": summarize(downloads),
        "public_api_peak_growth_mib": round(max(growth) / MIB, 1),
    }


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Add each figure's ratio chain/direct and goal to results; print the figures and the CPU costs as tables."""
    rows = []
    for figure, unit, goal in (
        ("poll", "req/s", GOAL_POLL_RATIO),
        ("poll_concurrent", "req/s", GOAL_POLL_RATIO),
        ("upload_mib_s", "MiB/s", GOAL_TRANSFER_RATIO),
        ("download_mib_s", "MiB/s", GOAL_TRANSFER_RATIO),
    ):
        direct_rate = results[figure]["direct"]["rate"]
        ratio = results[figure]["chain"]["rate"] / direct_rate
        results[figure]["ratio"] = round(ratio, 3)
        results[figure]["goal"] = goal
        label = f"{figure} ({unit})" + (f", {args.concurrency} connections" if figure == "poll_concurrent" else "")
        rows.append(
            (
                label,
                direct_rate,
                results[figure]["public"]["rate"],
                results[figure]["chain"]["rate"],
                f"{ratio:.2f}",
                f">= {goal} {verdict(ratio, goal)}",
            )
        )
    growth_mib = results["public_api_peak_growth_mib"]
    rows.append(
        (
            "public API peak RSS growth (MiB)",
            "",
            "",
            growth_mib,
            "",
            f"< {GOAL_RSS_GROWTH_MIB:g} {verdict(growth_mib, GOAL_RSS_GROWTH_MIB, higher_is_better=False)}",
        )
    )
    print(
        f"\nmedians of {args.poll_repeat} (polls) and {args.repeat} (transfers of {args.size_mib} MiB); "
        f"chain = {results['through']}; load average {results['load_average_at_end'][0]:.1f} "
        f"on {results['cpus']} CPUs at the end\n"
    )
    print_table(("figure", "direct", "public API alone", "chain", "ratio", "goal"), rows)
    print("\nCPU milliseconds per request (polls) or per MiB (transfers), median:\n")
    cpu_rows = []
    for figure in ("poll", "poll_concurrent", "upload_mib_s", "download_mib_s"):
        for path in PATHS:
            cpu = results[figure][path]
            costs = [cpu.get(f"cpu_ms_{name}", "") for name in ("client", "traefik", "public", "private")]
            cpu_rows.append((figure, PATH_NAMES[path], *costs))
    print_table(("figure", "path", "client", "traefik", "public API", "private API"), cpu_rows)
