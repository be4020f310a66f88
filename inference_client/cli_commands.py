"""What each `inference-server` command does, on top of `InferenceClient`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference_client.cli_keys import KeysCommands
from inference_client.cli_parser import UsageError
from inference_client.client import InferenceClient, is_zip_path
from inference_client.errors import EXIT_CODES
from inference_client.progress import ByteBar, StateSpinner
from inference_client.results import Model, TaskStatus

__all__ = ["Cli"]


class Cli(KeysCommands):
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

    def _model_zip_size(self) -> int | None:
        """The size of `--model-zip` (None for none or a folder); UsageError when it does not exist."""
        path = self.args.model_zip
        if path and not Path(path).exists():
            raise UsageError(f"model zip not found: {path}")
        return Path(path).stat().st_size if path and Path(path).is_file() else None

    def _model_fields(self) -> dict[str, Any]:
        """The model fields `models add` and `models update` share (None: not given)."""
        a = self.args
        return {
            "description": a.description,
            "use_gpu": a.use_gpu,
            "timeout": a.time_limit,
            "mem_limit": a.mem_limit,
            "shm_size": a.shm_size,
            "cpus": a.cpus,
            "network": a.network,
        }

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
        size = self._model_zip_size()
        with ByteBar("upload model", total=size, enabled=self.feedback and bool(a.model_zip)) as bar:
            model = self.client.add_model(
                container_tag=a.container_tag,
                human_readable_id=a.human_readable_id,
                model_zip=a.model_zip,
                **self._model_fields(),
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
        """`models delete [--force]`."""
        hid = self.args.human_readable_id
        cancelled = self.client.delete_model(hid, force=self.args.force)
        text = f"deleted model {hid}" + (f"; cancelled {len(cancelled)} task(s)" if cancelled else "")
        self.out({"human_readable_id": hid, "deleted": True, "cancelled": cancelled}, text)
        return 0

    def models_update(self) -> int:
        """`models update`: a new version; the options not given stay as they are."""
        a = self.args
        size = self._model_zip_size()
        with ByteBar("upload model", total=size, enabled=self.feedback and bool(a.model_zip)) as bar:
            model = self.client.update_model(
                a.human_readable_id,
                model_zip=a.model_zip,
                progress=bar.update,
                container_tag=a.container_tag,
                **self._model_fields(),
                max_output_size=a.max_output_size,
            )
        self.out(model.model_dump(mode="json"), f"model {model.human_readable_id} is now version {model.version}")
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
                idempotency_key=a.idempotency_key,
                callback_url=a.callback_url,
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

    def tasks_wait(self) -> int:
        """`tasks wait`: wait until the task has ended; exit code by its final state."""
        return self._wait_and_fetch(self.args.uid, None)

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
        page = self.client.list_tasks(status=a.status, model=a.model, limit=a.limit, offset=a.offset, all=a.all)
        lines = [f"{'UID':<44} {'STATUS':<10} {'MODEL':<28} CREATED"]
        lines += [f"{t.uid:<44} {t.status:<10} {t.model or '':<28} {t.created_at or ''}" for t in page.items]
        lines.append(f"{len(page.items)} of {page.total} tasks")
        self.out(page.model_dump(mode="json"), "\n".join(lines))
        return 0

    def audit_list(self) -> int:
        """`audit list`."""
        a = self.args
        page = self.client.list_audit(
            action=a.audit_action, key_id=a.key_id, target=a.target, limit=a.limit, offset=a.offset
        )
        lines = [f"{'AT':<26} {'ACTION':<14} {'TARGET':<34} KEY"]
        for row in page.items:
            who = f"{row.key_id or '-'} ({row.key_name})" if row.key_name else (row.key_id or "-")
            lines.append(f"{row.at.isoformat(timespec='seconds'):<26} {row.action:<14} {row.target:<34} {who}")
        lines.append(f"{len(page.items)} of {page.total} rows")
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
