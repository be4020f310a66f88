"""The three consumer benchmarks: latency against raw `docker run`, makespan of two consumers, memory."""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import MIB, RssSampler, median
from bench.consumer_tasks.baseline import input_zip, raw_docker_lanes, raw_docker_run
from bench.consumer_tasks.stack import Api, start_consumer, wait_for_consumers

_TIMINGS = re.compile(r"task (\S+) timings: (.*); total ([0-9.]+) s")


def step_medians(logs: list[Path]) -> dict[str, float]:
    """The median seconds of each task step, from the consumers' DEBUG `timings:` lines (steps a task skipped: 0)."""
    tasks: list[dict[str, float]] = []
    for path in logs:
        for match in _TIMINGS.finditer(path.read_text(errors="replace")):
            steps = {"total": float(match.group(3))}
            for part in match.group(2).split(", "):
                name, _, seconds = part.rpartition(" ")
                steps[name] = float(seconds)
            tasks.append(steps)
    names = list(dict.fromkeys(name for steps in tasks for name in steps))
    return {name: median(steps.get(name, 0.0) for steps in tasks) for name in names}


def measure_latency(api: Api, images: dict[str, str], work: Path, options: argparse.Namespace) -> dict[str, Any]:
    """Seconds from posting a task of the trivial model to its end, against `docker run` of the same image."""
    data = input_zip(MIB)
    hid = api.model(images["trivial"])
    api.wait(api.submit(hid, data))  # warm-up: first use of the image and connections
    raw, served = [], []
    for _ in range(options.runs):
        raw.append(raw_docker_run(images["trivial"], data, work))
        started = time.monotonic()
        api.wait(api.submit(hid, data))
        served.append(time.monotonic() - started)
    results = {
        "raw_median_s": median(raw),
        "consumer_median_s": median(served),
        "ratio": median(served) / median(raw),
        "runs": options.runs,
    }
    if options.step_times:
        results["step_medians_s"] = step_medians([work / "one.log"])
    return results


def measure_makespan(
    api: Api,
    images: dict[str, str],
    work: Path,
    options: argparse.Namespace,
    consumers: list[subprocess.Popen[bytes]],
    api_url: str,
    amqp_url: str,
    log_level: str,
) -> dict[str, Any]:
    """Seconds for `--tasks` one-second tasks with a second consumer started (and stopped again at the end)."""
    consumers.append(start_consumer(api_url, amqp_url, work, "two", log_level))
    hid = api.model(images["sleep1"])
    data = input_zip(1024)
    # Both consumers must be taking messages before the clock starts (a process needs seconds to start).
    wait_for_consumers(amqp_url, 2)
    raw_lanes = raw_docker_lanes(images["sleep1"], options.tasks, 2)
    mark = (work / "one.log").stat().st_size
    started = time.monotonic()
    uids = [api.submit(hid, data) for _ in range(options.tasks)]
    for uid in uids:
        api.wait(uid, poll=0.2)
    makespan = time.monotonic() - started
    # 1 s of work per task, two consumers side by side.
    ideal = options.tasks * 1.0 / 2
    results = {
        "tasks": options.tasks,
        "consumers": 2,
        "makespan_s": makespan,
        "ideal_s": ideal,
        "ratio": makespan / ideal,
        "raw_docker_two_lanes_s": raw_lanes,
        "ratio_to_raw_docker": makespan / raw_lanes,
    }
    if options.step_times:
        tail = work / "one-makespan.log"
        with open(work / "one.log", "rb") as source:
            source.seek(mark)
            tail.write_bytes(source.read())
        results["step_medians_s"] = step_medians([tail, work / "two.log"])
    consumers.pop().terminate()
    return results


def measure_memory(
    api: Api, images: dict[str, str], options: argparse.Namespace, consumer: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """The consumer's RSS growth while it handles a task with a big output."""

    hid = api.model(images["big_output"])
    with RssSampler(consumer.pid, interval=0.05) as sampler:
        uid = api.submit(hid, input_zip(1024))
        status = api.wait(uid, poll=0.5, timeout=1800)
    return {
        "output_mb": options.output_mb,
        "output_zip_bytes": status.get("output_size"),
        "rss_growth_mib": sampler.growth / MIB,
        "peak_rss_mib": sampler.peak_bytes / MIB,
    }
