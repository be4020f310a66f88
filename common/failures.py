"""Failure reason classes for the metrics: what a failed task's reason says about whose failure it was.

Both services count failures by these classes: the private API from the `error` it stored (metrics.py, in SQL), the
consumer from the reason it reports. The prefixes are the texts job_consumer/task_runner.py (`failure_reason`) and the
private API's lease code (crud_tasks.py, leases.py) write; tests/private_api/test_metrics.py keeps them in step.
"""

from __future__ import annotations

__all__ = ["INFRASTRUCTURE", "MODEL_EXIT", "OUT_OF_MEMORY", "REASON_CLASSES", "REASON_PREFIXES", "TIMEOUT", "classify"]

MODEL_EXIT = "model_exit"
TIMEOUT = "timeout"
OUT_OF_MEMORY = "out_of_memory"
INFRASTRUCTURE = "infrastructure"
REASON_CLASSES = (MODEL_EXIT, TIMEOUT, OUT_OF_MEMORY, INFRASTRUCTURE)

# Checked in order; a reason that matches none is the model's own failure (a non-zero exit, an output over its
# limit, an image that cannot run, an input it cannot use): MODEL_EXIT.
REASON_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gave up after", INFRASTRUCTURE),  # out of attempts (consumers lost) or of infrastructure retries
    ("consumer lost", INFRASTRUCTURE),  # the lease reaper used up the attempts
    ("its model ", INFRASTRUCTURE),  # the model was deleted while the task waited
    ("timed out after", TIMEOUT),
    ("killed: out of memory", OUT_OF_MEMORY),
)


def classify(reason: str | None) -> str:
    """The class of a failed task's reason."""
    text = reason or ""
    for prefix, reason_class in REASON_PREFIXES:
        if text.startswith(prefix):
            return reason_class
    return MODEL_EXIT
