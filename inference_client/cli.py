"""`inference-server`: the command-line client (models, tasks, health) built on `InferenceClient`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from common.settings import is_true
from inference_client.client import InferenceClient, is_zip_path
from inference_client.errors import EXIT_CODES, InferenceServerError, TaskFailedError
from inference_client.progress import ByteBar, StateSpinner
from inference_client.results import Model, TaskStatus

__all__ = ["build_parser", "main"]

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
9 task not finished (551 or --timeout); 10 finished without output (553); 11 server busy (429/503);
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


def _positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


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

    tasks = commands.add_parser("tasks", parents=[common], help="submit tasks and fetch their results")
    task_commands = tasks.add_subparsers(dest="action", metavar="ACTION", required=True)
    submit = task_commands.add_parser(
        "submit", parents=[common], help="post an input (folder or zip) for a model; prints the task uid"
    )
    submit.add_argument("model", help="the model's human_readable_id")
    submit.add_argument("input", help="a folder (zipped on the fly) or a .zip file")
    submit.add_argument("--wait", action="store_true", help="wait until the task is finished or failed")
    submit.add_argument(
        "-o", "--output", help="where the output goes: a folder, or a path ending in .zip (implies --wait)"
    )
    _wait_options(submit)
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
    listing = task_commands.add_parser("list", parents=[common], help="list tasks")
    listing.add_argument("--status", choices=["pending", "running", "finished", "failed", "cancelled"])
    listing.add_argument("--model")
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    return parser


class Cli:
    """One CLI invocation: the parsed arguments, the client, and how to print."""

    def __init__(self, args: argparse.Namespace, client: InferenceClient) -> None:
        self.args = args
        self.client = client
        self.json = bool(args.json)
        # Bars and the spinner go to stderr, so they never mix with --json on stdout.
        self.feedback = not args.quiet

    # -- output -------------------------------------------------------------------------------------------

    def out(self, data: Any, text: str) -> None:
        """Print JSON or text on stdout."""
        if self.json:
            print(json.dumps(data, indent=2, default=str))
        elif text:
            print(text)

    @staticmethod
    def note(text: str) -> None:
        """A message for the person at the terminal (stderr)."""
        print(text, file=sys.stderr)

    @staticmethod
    def _model_line(model: Model) -> str:
        """One table row."""
        kind = "gpu" if model.use_gpu else "cpu"
        zipped = "zip" if model.model_available else "-"
        tag = model.container_tag
        return f"{model.human_readable_id:<28} {kind:<4} {zipped:<4} {tag:<40} {model.description or ''}"

    @staticmethod
    def _model_text(model: Model) -> str:
        """A model as indented lines."""
        return "\n".join(f"{key}: {value}" for key, value in model.model_dump().items() if value is not None)

    @staticmethod
    def _status_text(status: TaskStatus) -> str:
        """A task status as indented lines."""
        return "\n".join(f"{key}: {value}" for key, value in status.model_dump().items() if value is not None)

    # -- commands -----------------------------------------------------------------------------------------

    def health(self) -> int:
        """`health`."""
        data = self.client.health()
        self.out(data, f"{self.client.base_url}: {data.get('status', 'ok')}")
        return 0

    def models_list(self) -> int:
        """`models list`."""
        models = self.client.list_models()
        header = f"{'ID':<28} {'RES':<4} {'ZIP':<4} {'CONTAINER TAG':<40} DESCRIPTION"
        rows = [header, *(self._model_line(m) for m in models)] if models else ["no models registered"]
        self.out([m.model_dump(mode="json") for m in models], "\n".join(rows))
        return 0

    def models_add(self) -> int:
        """`models add`."""
        a = self.args
        if a.model_zip and not Path(a.model_zip).exists():
            raise UsageError(f"model zip not found: {a.model_zip}")
        size = Path(a.model_zip).stat().st_size if a.model_zip and Path(a.model_zip).is_file() else None
        with ByteBar("upload model", total=size, enabled=self.feedback and bool(a.model_zip)) as bar:
            model = self.client.add_model(
                container_tag=a.container_tag,
                human_readable_id=a.human_readable_id,
                model_zip=a.model_zip,
                description=a.description,
                use_gpu=a.use_gpu,
                timeout=a.time_limit,
                mem_limit=a.mem_limit,
                shm_size=a.shm_size,
                cpus=a.cpus,
                network=a.network,
                progress=bar.update,
            )
        self.out(model.model_dump(mode="json"), f"registered model {model.human_readable_id}")
        return 0

    def models_show(self) -> int:
        """`models show`."""
        model = self.client.get_model(self.args.human_readable_id)
        self.out(model.model_dump(mode="json"), self._model_text(model))
        return 0

    def models_delete(self) -> int:
        """`models delete`."""
        self.client.delete_model(self.args.human_readable_id)
        hid = self.args.human_readable_id
        self.out({"human_readable_id": hid, "deleted": True}, f"deleted model {hid}")
        return 0

    def tasks_submit(self) -> int:
        """`tasks submit`: upload, then optionally wait and download."""
        a = self.args
        source = Path(a.input)
        if not source.exists():
            raise UsageError(f"input not found: {source}")
        if a.output:
            _check_output(a.output)
        body = self.client.input_body(source)
        label = "zip + upload" if source.is_dir() else "upload"
        with ByteBar(label, total=body.total_source_bytes, enabled=self.feedback) as bar:
            uid = self.client.submit(
                a.model,
                source,
                progress=bar.update,
                on_busy=lambda s: self.note(f"server busy; retry in {s:.0f} s"),
            )
        if not (a.wait or a.output):
            self.out({"uid": uid}, uid)
            return 0
        if not self.json:
            self.note(f"submitted task {uid}")
        return self._wait_and_fetch(uid, a.output)

    def _wait_and_fetch(self, uid: str, output: str | None) -> int:
        """Wait for a task, then download its output when `output` is given; exit code by final state."""
        a = self.args
        spinner = StateSpinner(uid, enabled=self.feedback)
        try:
            final = self.client.wait(
                uid,
                timeout=a.timeout,
                poll_initial=a.poll_interval,
                poll_max=max(a.poll_max, a.poll_interval),
                on_status=spinner,
                sleep=spinner.sleep,
            )
        except KeyboardInterrupt:
            spinner.close()
            self.note(f"stopped waiting; task {uid} keeps running. Resume: inference-server tasks get {uid} --wait")
            return EXIT_CODES["interrupted"]
        finally:
            spinner.close()
        result: dict[str, Any] = {"uid": uid, "status": final.model_dump(mode="json")}
        if final.status == "cancelled":
            self.out(result, f"task {uid} was cancelled")
            return EXIT_CODES["cancelled"]
        if final.status == "failed":
            raise self.client.failure(uid, final)
        if output is None:
            self.out(result, f"task {uid} finished")
            return 0
        written = self._download(uid, output)
        result["output"] = str(written)
        self.out(result, f"task {uid} finished; output in {written}")
        return 0

    def _download(self, uid: str, output: str) -> Path:
        """Download with a progress bar."""
        with ByteBar("download", enabled=self.feedback) as bar:
            written = self.client.download(uid, output, progress=bar.update, on_start=bar.set_total)
        assert written is not None
        return written

    def tasks_get(self) -> int:
        """`tasks get`: download the output (waiting first with --wait)."""
        a = self.args
        output = a.output or f"{a.uid}.zip"
        _check_output(output)
        if a.wait:
            return self._wait_and_fetch(a.uid, output)
        written = self._download(a.uid, output)
        self.out({"uid": a.uid, "output": str(written)}, f"output of task {a.uid} in {written}")
        return 0

    def tasks_status(self) -> int:
        """`tasks status`."""
        status = self.client.status(self.args.uid)
        self.out(status.model_dump(mode="json"), self._status_text(status))
        return EXIT_CODES["cancelled"] if status.status == "cancelled" else 0

    def tasks_logs(self) -> int:
        """`tasks logs`."""
        text = self.client.logs(self.args.uid)
        if self.json:
            self.out({"uid": self.args.uid, "logs": text}, "")
        else:
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return 0

    def tasks_cancel(self) -> int:
        """`tasks cancel`."""
        self.client.cancel(self.args.uid)
        self.out({"uid": self.args.uid, "cancelled": True}, f"cancelled task {self.args.uid}")
        return 0

    def tasks_list(self) -> int:
        """`tasks list`."""
        a = self.args
        page = self.client.list_tasks(status=a.status, model=a.model, limit=a.limit, offset=a.offset)
        lines = [f"{'UID':<44} {'STATUS':<10} {'MODEL':<28} CREATED"]
        lines += [f"{t.uid:<44} {t.status:<10} {t.model or '':<28} {t.created_at or ''}" for t in page.items]
        lines.append(f"{len(page.items)} of {page.total} tasks")
        self.out(page.model_dump(mode="json"), "\n".join(lines))
        return 0

    def dispatch(self) -> int:
        """Run the chosen command."""
        name = self.args.command + (f"_{self.args.action}" if getattr(self.args, "action", None) else "")
        handler: Callable[[], int] = getattr(self, name)
        return handler()


def _check_output(output: str) -> None:
    """Refuse an output path that is neither a folder nor a .zip before any time is spent."""
    path = Path(output)
    if not is_zip_path(path) and path.exists() and not path.is_dir():
        raise UsageError(f"output {output} is a file; give a folder or a path ending in .zip")
    if is_zip_path(path) and path.is_dir():
        raise UsageError(f"output {output} is a folder although its name ends in .zip")


def _client_from_args(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> InferenceClient:
    """Build the client from flags, falling back to the environment."""
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise UsageError(f"no server URL: pass --url or set {ENV_URL}")
    api_key = args.api_key or os.environ.get(ENV_API_KEY) or None
    internal_token = args.internal_token or os.environ.get(ENV_INTERNAL_TOKEN) or None
    ca_cert = args.ca_cert or os.environ.get(ENV_CA_CERT) or None
    insecure = args.insecure or is_true(os.environ.get(ENV_INSECURE))
    if insecure and ca_cert:
        raise UsageError("give either --ca-cert or --insecure, not both")
    if ca_cert and not Path(ca_cert).is_file():
        raise UsageError(f"CA certificate file not found: {ca_cert}")
    verify: bool | str = False if insecure else (ca_cert or True)
    try:
        return InferenceClient(
            url,
            api_key=api_key,
            internal_token=internal_token,
            verify=verify,
            timeout=httpx.Timeout(args.http_timeout),
            transport=transport,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Entry point of `inference-server`; returns the exit code (`transport` lets tests swap the network)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = bool(args.json)
    try:
        with _client_from_args(args, transport) as client:
            return Cli(args, client).dispatch()
    except UsageError as exc:
        if as_json:
            print(json.dumps({"error": "UsageError", "detail": str(exc)}))
        parser.print_usage(sys.stderr)
        print(f"inference-server: error: {exc}", file=sys.stderr)
        return EXIT_CODES["usage"]
    except InferenceServerError as exc:
        if as_json:
            print(json.dumps(exc.to_dict(), indent=2, default=str))
        print(f"inference-server: {exc.message}", file=sys.stderr)
        if isinstance(exc, TaskFailedError) and exc.log_tail:
            print(f"--- exit code {exc.model_exit_code}; last log lines ---\n{exc.log_tail}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except OSError as exc:
        if as_json:
            print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}))
        print(f"inference-server: {exc}", file=sys.stderr)
        return EXIT_CODES["error"]


if __name__ == "__main__":
    sys.exit(main())
