"""The command line of `inference-server`: its commands, options and help."""

from __future__ import annotations

import argparse
from typing import Any

from inference_client.cli_keys import add_keys_parser

__all__ = [
    "ENV_API_KEY",
    "ENV_CA_CERT",
    "ENV_INSECURE",
    "ENV_INTERNAL_TOKEN",
    "ENV_URL",
    "UsageError",
    "build_parser",
]

ENV_URL = "INFERENCE_SERVER_URL"
ENV_API_KEY = "INFERENCE_SERVER_API_KEY"
ENV_CA_CERT = "INFERENCE_SERVER_CA_CERT"
ENV_INSECURE = "INFERENCE_SERVER_INSECURE"
ENV_INTERNAL_TOKEN = "INFERENCE_SERVER_INTERNAL_TOKEN"

_EPILOG = f"""\
environment: {ENV_URL} (server URL), {ENV_API_KEY},
  {ENV_CA_CERT} (a PEM file), {ENV_INSECURE}=1.
exit codes: 0 ok; 1 error; 2 usage; 3 cannot reach the server; 4 refused (401/403);
5 model or task not found (550/554); 6 conflict (409); 7 bad input (4xx, 422); 8 task failed (552);
9 task not finished (551 or --timeout); 10 finished without output (553); 11 server busy or its disk full (429/503/507);
12 server error (5xx); 13 task cancelled; 130 interrupted.
"""


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (e.g. no server URL)."""


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted before or after the command (`suppress` keeps a subcommand from resetting them)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument("--url", default=default(None), help=f"server URL, e.g. https://host (env {ENV_URL})")
    group.add_argument("--api-key", default=default(None), help=f"API key (env {ENV_API_KEY})")
    group.add_argument("--ca-cert", default=default(None), help=f"CA certificate (PEM) to trust (env {ENV_CA_CERT})")
    group.add_argument(
        "--internal-token",
        default=default(None),
        help=f"operators only: talk to the private API with its internal token (env {ENV_INTERNAL_TOKEN})",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=default(False),
        help=f"do not verify the server's TLS certificate (env {ENV_INSECURE}=1)",
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON on stdout for scripts")
    group.add_argument("-q", "--quiet", action="store_true", default=default(False), help="no progress bars or spinner")
    group.add_argument(
        "--http-timeout",
        type=float,
        default=default(120.0),
        metavar="SECONDS",
        help="network timeout per request (default 120)",
    )


def _positive(text: str, kind: type[int] | type[float], noun: str) -> float:
    """`text` as a `kind` greater than 0, or the argparse error that says what is wrong."""
    try:
        value = kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    return _positive(text, float, "a number")


def _positive_int(text: str) -> int:
    """An argparse type: a whole number > 0."""
    return int(_positive(text, int, "a whole number"))


def _wait_options(parser: argparse.ArgumentParser) -> None:
    """Options of commands that wait for a task."""
    parser.add_argument(
        "--timeout", type=_positive_float, metavar="SECONDS", help="give up waiting after this long (exit 9)"
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="first pause between polls; it grows to --poll-max (default 2)",
    )
    parser.add_argument(
        "--poll-max", type=_positive_float, default=30.0, metavar="SECONDS", help="longest pause (default 30)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `inference-server`."""
    parser = argparse.ArgumentParser(
        prog="inference-server",
        description="Run models on an InferenceServer: register models, submit inputs, fetch outputs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser("health", parents=[common], help="check that the server answers")

    models = commands.add_parser("models", parents=[common], help="list, add, show and delete models")
    model_commands = models.add_subparsers(dest="action", metavar="ACTION", required=True)
    model_commands.add_parser("list", parents=[common], help="list the registered models")
    add = model_commands.add_parser("add", parents=[common], help="register a model")
    add.add_argument("human_readable_id", help="stable id users submit to (letters, digits, ._-)")
    add.add_argument("container_tag", help="docker image tag the server runs")
    add.add_argument("--zip", dest="model_zip", help="model.zip (or a folder) mounted read-only at /model")
    add.add_argument("--description", help="what the model does")
    gpu = add.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_true", default=True, help="needs a GPU (default)")
    gpu.add_argument("--cpu", dest="use_gpu", action="store_false", help="runs on CPU consumers")
    add.add_argument("--time-limit", type=_positive_int, metavar="SECONDS", help="run time limit")
    add.add_argument("--mem-limit", help="memory limit, a docker size such as 8g")
    add.add_argument("--shm-size", help="shared memory, a docker size such as 2g (PyTorch data loaders)")
    add.add_argument("--cpus", type=_positive_float, help="CPU limit, e.g. 4")
    add.add_argument("--network", action="store_true", default=None, help="give the container a network")
    show = model_commands.add_parser("show", parents=[common], help="show one model")
    show.add_argument("human_readable_id")
    delete = model_commands.add_parser("delete", parents=[common], help="delete a model")
    delete.add_argument("human_readable_id")
    delete.add_argument("--force", action="store_true", help="also cancel its pending and running tasks")
    upd = model_commands.add_parser("update", parents=[common], help="make a new version of a model")
    upd.add_argument("human_readable_id")
    upd.add_argument("--container-tag", help="a new docker image tag")
    upd.add_argument("--zip", dest="model_zip", help="a new model.zip (or folder) mounted at /model")
    upd.add_argument("--description")
    upd_gpu = upd.add_mutually_exclusive_group()
    upd_gpu.add_argument("--gpu", dest="use_gpu", action="store_true", default=None, help="needs a GPU")
    upd_gpu.add_argument("--cpu", dest="use_gpu", action="store_false", help="runs on CPU consumers")
    upd.add_argument("--time-limit", type=_positive_int, metavar="SECONDS", help="run time limit")
    upd.add_argument("--mem-limit", help="memory limit, a docker size such as 8g")
    upd.add_argument("--shm-size", help="shared memory, a docker size such as 2g")
    upd.add_argument("--cpus", type=_positive_float, help="CPU limit, e.g. 4")
    upd_net = upd.add_mutually_exclusive_group()
    upd_net.add_argument("--network", action="store_true", default=None, help="give the container a network")
    upd_net.add_argument("--no-network", dest="network", action="store_false", help="no network (the default)")
    upd.add_argument("--max-output-size", help="largest output zip, a docker size such as 50g")

    tasks = commands.add_parser("tasks", parents=[common], help="submit tasks and fetch their results")
    task_commands = tasks.add_subparsers(dest="action", metavar="ACTION", required=True)
    submit = task_commands.add_parser(
        "submit", parents=[common], help="post an input (folder or zip) for a model; prints the task uid"
    )
    submit.add_argument("model", help="the model's human_readable_id")
    submit.add_argument("input", help="a folder (zipped on the fly) or a .zip file")
    submit.add_argument("--wait", action="store_true", help="wait until the task is finished or failed")
    submit.add_argument(
        "--idempotency-key", help="the same key within 24 h answers the same task uid (default: a new random one)"
    )
    submit.add_argument(
        "-o", "--output", help="where the output goes: a folder, or a path ending in .zip (implies --wait)"
    )
    submit.add_argument(
        "--callback-url", metavar="URL", help="the server POSTs the final status here (hosts the server allows)"
    )
    _wait_options(submit)
    wait = task_commands.add_parser(
        "wait", parents=[common], help="wait until a task has ended, showing its phase and progress"
    )
    wait.add_argument("uid")
    _wait_options(wait)
    for name, text in (
        ("status", "show where a task stands"),
        ("logs", "print the model's stdout/stderr"),
        ("cancel", "cancel a task and delete its data"),
    ):
        sub = task_commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("uid")
    get = task_commands.add_parser("get", parents=[common], help="download a task's output")
    get.add_argument("uid")
    get.add_argument("-o", "--output", help="a folder (unpacked) or a path ending in .zip (default: UID.zip)")
    get.add_argument("--wait", action="store_true", help="wait for the task to end first")
    _wait_options(get)
    listing = task_commands.add_parser("list", parents=[common], help="list your own tasks, newest first")
    listing.add_argument("--status", choices=["pending", "running", "finished", "failed", "cancelled"])
    listing.add_argument("--model")
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--all", action="store_true", help="everyone's tasks (admin keys only)")

    audit = commands.add_parser("audit", parents=[common], help="who changed what, and when (admin keys)")
    audit_commands = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    audit_list = audit_commands.add_parser("list", parents=[common], help="list the audit trail, newest first")
    audit_list.add_argument("--action", dest="audit_action", metavar="ACTION", help="e.g. model.update, task.cancel")
    audit_list.add_argument("--key-id", help="rows of this API key only")
    audit_list.add_argument("--target", help="a key id, model id or task uid")
    audit_list.add_argument("--limit", type=_positive_int, default=50)
    audit_list.add_argument("--offset", type=int, default=0)
    add_keys_parser(commands, common)
    return parser
