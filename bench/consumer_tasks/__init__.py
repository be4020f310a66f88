"""Consumer benchmarks: task latency against raw `docker run`, makespan of two consumers, memory on a 1 GiB output.

Starts its own RabbitMQ container (RABBITMQ_IMAGE), the private API and consumers as subprocesses, and builds the
tiny busybox test images. `python -m bench consumer_tasks [--runs N] [--tasks N] [--output-mb N] [--skip ...]
[--step-times]`. With `--step-times` the consumers log at DEBUG and the median time of each step of a task is printed.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the three consumer benchmarks (see bench/consumer_tasks/run.py) and print their tables."""
    from bench.consumer_tasks.run import run

    return run(argv)
