"""The consumer benchmarks' table (and each step's median with --step-times); bench/results/consumer_tasks.json."""

from __future__ import annotations

from typing import Any

from bench.common import print_table, write_results


def report(results: dict[str, Any]) -> None:
    """Print the table of what was measured and write the results."""
    rows = []
    if "latency" in results:
        r = results["latency"]
        rows.append(
            (
                "latency, 1 MiB input, trivial model (median)",
                f"{r['consumer_median_s']:.2f} s vs raw docker run {r['raw_median_s']:.2f} s",
                f"{r['ratio']:.2f}x (goal <= 1.5x)",
            )
        )
    if "makespan" in results:
        r = results["makespan"]
        rows.append(
            (
                f"makespan, {r['tasks']} one-second tasks, 2 consumers",
                f"{r['makespan_s']:.1f} s, ideal {r['ideal_s']:.1f} s; "
                f"2 lanes of raw docker run {r['raw_docker_two_lanes_s']:.1f} s",
                f"{r['ratio']:.2f}x (goal <= 1.1x); {r['ratio_to_raw_docker']:.2f}x raw docker",
            )
        )
    if "memory" in results:
        r = results["memory"]
        rows.append(
            (f"{r['output_mb']} MiB output", f"consumer RSS growth {r['rss_growth_mib']:.1f} MiB", "goal < 64 MiB")
        )
    print_table(("benchmark", "measured", "result"), rows)
    for name in ("latency", "makespan"):
        if "step_medians_s" in results.get(name, {}):
            print(f"\nmedian seconds per task step ({name}):")
            print_table(("step", "median s"), [(k, f"{v:.3f}") for k, v in results[name]["step_medians_s"].items()])
    write_results("consumer_tasks", results)
