"""One measurement: a rate and each process's CPU time per unit of work; the order of the paths in each round."""

from __future__ import annotations

from collections.abc import Callable

from bench.public_chain.stack import Processes

# The measurements of each path: (rate, CPU milliseconds per unit of work of each process).
Samples = dict[str, list[tuple[float, dict[str, float]]]]


def measure(processes: Processes, action: Callable[[], float], units: float) -> tuple[float, dict[str, float]]:
    """Run action (which returns a rate); the rate and each process's CPU milliseconds per unit of work."""
    before = processes.cpu()
    rate = action()
    after = processes.cpu()
    return rate, {name: (after[name] - before[name]) * 1000 / units for name in before}


def rotated(paths: tuple[str, ...], run: int) -> tuple[str, ...]:
    """The paths starting at a different one each run, so that no path always goes first."""
    shift = run % len(paths)
    return paths[shift:] + paths[:shift]
