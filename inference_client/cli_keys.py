"""`inference-server keys create|list|revoke|rotate`: API keys, for admins."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from inference_client.client import InferenceClient
from inference_client.keys import ApiKey

__all__ = ["KeysCommands", "add_keys_parser"]


def _positive_number(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return int(text)


def add_keys_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `keys` and its actions to the command parsers."""
    keys = commands.add_parser("keys", parents=[common], help="make, list, revoke and rotate API keys (admin)")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", parents=[common], help="make a key; prints its secret once")
    create.add_argument("name", help="who or what uses it, e.g. dicom-node-2")
    create.add_argument("--admin", action="store_true", help="may manage models and keys")
    create.add_argument("--expires-in-days", type=_positive_number, metavar="DAYS", help="default: never")
    create.add_argument("--max-queued-tasks", type=_count, metavar="N", help="default: the server's")
    create.add_argument("--max-running-tasks", type=_count, metavar="N", help="default: no limit")
    actions.add_parser("list", parents=[common], help="list the keys (never their secrets)")
    for name, text in (("revoke", "revoke a key: 401 from now on"), ("rotate", "a new secret for the same key")):
        actions.add_parser(name, parents=[common], help=text).add_argument("key_id")


def _line(key: ApiKey) -> str:
    """One table row."""
    role = "admin" if key.admin else "user"
    expires = f"{key.expires_at:%Y-%m-%d %H:%M}" if key.expires_at else "never"
    used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "-"
    return f"{key.id:<18} {key.state:<8} {role:<6} {expires:<17} {used:<17} {key.name}"


class KeysCommands:
    """The `keys` commands of `Cli` (which provides the client and the output)."""

    args: argparse.Namespace
    client: InferenceClient
    json: bool

    def _show_secret(self, key: ApiKey) -> int:
        """Print a new secret (stdout: scripts capture it) and the note that it is shown only once."""
        if self.json:
            print(json.dumps(key.model_dump(mode="json"), indent=2, default=str))
        else:
            print(key.secret)
            print(f"key {key.id} ({key.name}): keep the secret above; it is shown only this once", file=sys.stderr)
        return 0

    def keys_create(self) -> int:
        """`keys create`."""
        a = self.args
        key = self.client.create_key(
            a.name,
            admin=a.admin,
            expires_in_days=a.expires_in_days,
            max_queued_tasks=a.max_queued_tasks,
            max_running_tasks=a.max_running_tasks,
        )
        return self._show_secret(key)

    def keys_list(self) -> int:
        """`keys list`."""
        keys = self.client.list_keys()
        if self.json:
            print(json.dumps([k.model_dump(mode="json") for k in keys], indent=2, default=str))
            return 0
        print(f"{'ID':<18} {'STATE':<8} {'ROLE':<6} {'EXPIRES':<17} {'LAST USED':<17} NAME")
        print("\n".join(_line(key) for key in keys) or "no keys")
        return 0

    def keys_revoke(self) -> int:
        """`keys revoke`."""
        key = self.client.revoke_key(self.args.key_id)
        if self.json:
            print(json.dumps(key.model_dump(mode="json"), indent=2, default=str))
        else:
            print(f"revoked key {key.id} ({key.name})")
        return 0

    def keys_rotate(self) -> int:
        """`keys rotate`."""
        return self._show_secret(self.client.rotate_key(self.args.key_id))
