"""`python -m private_api keys create|list|revoke|rotate`: API keys on the host, e.g. the first admin key.

Run where the private API runs (`docker compose exec private-api python -m private_api keys ...`): it reads the
same DATABASE_URL / DATA_DIR and writes the database directly, so it works while the service is open.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from common.keys import KeyCreated, KeyIn, KeyOut
from common.settings import settings_or_exit
from private_api import audit, crud_keys
from private_api.auth import Caller
from private_api.config import get_settings
from private_api.db import make_engine, make_sessionmaker, migrate
from private_api.errors import ApiError

__all__ = ["main"]

# Who the audit names for changes made here.
HOST = Caller(owner=None, key_id=None, key_name="host (python -m private_api keys)", admin=True)


def _parser() -> argparse.ArgumentParser:
    """The command line of `python -m private_api keys`."""
    parser = argparse.ArgumentParser(prog="python -m private_api keys", description="Manage API keys on the host.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key; prints its secret once")
    create.add_argument("name", help="who or what uses it")
    create.add_argument("--admin", action="store_true", help="may manage models and keys")
    create.add_argument("--expires-in-days", type=float, metavar="DAYS", help="default: never")
    create.add_argument("--max-queued-tasks", type=int, metavar="N", help="default: KEY_MAX_QUEUED_TASKS")
    create.add_argument("--max-running-tasks", type=int, metavar="N", help="default: no limit")
    actions.add_parser("list", help="list the keys (never their secrets)")
    for name, text in (("revoke", "revoke a key (401 from now on)"), ("rotate", "a new secret for the same key")):
        actions.add_parser(name, help=text).add_argument("key_id")
    return parser


def _line(key: KeyOut) -> str:
    """One table row."""
    role = "admin" if key.admin else "user"
    expires = f"{key.expires_at:%Y-%m-%d %H:%M}" if key.expires_at else "never"
    used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "-"
    return f"{key.id:<18} {key.state:<8} {role:<6} {expires:<17} {used:<17} {key.name}"


def _print(result: KeyOut | list[KeyOut], as_json: bool) -> None:
    """The result as JSON or as text; a secret with the note that it is shown only once."""
    if as_json:
        data = (
            [k.model_dump(mode="json") for k in result] if isinstance(result, list) else result.model_dump(mode="json")
        )
        print(json.dumps(data, indent=2))
    elif isinstance(result, list):
        print(f"{'ID':<18} {'STATE':<8} {'ROLE':<6} {'EXPIRES':<17} {'LAST USED':<17} NAME")
        print("\n".join(_line(key) for key in result) or "no keys")
    elif isinstance(result, KeyCreated):
        print(f"id:     {result.id}\nname:   {result.name}\nadmin:  {result.admin}\nsecret: {result.secret}")
        print("The secret is shown only this once; send it as 'Authorization: Bearer <secret>'.", file=sys.stderr)
    else:
        print(_line(result))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one keys command; 0 when done, 1 when the key is unknown or cannot be changed."""
    args = _parser().parse_args(argv)
    if args.action == "create":
        try:
            key_in = KeyIn(
                name=args.name,
                admin=args.admin,
                expires_in_days=args.expires_in_days,
                max_queued_tasks=args.max_queued_tasks,
                max_running_tasks=args.max_running_tasks,
            )
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            print(f"python -m private_api keys: {problems}", file=sys.stderr)
            return 2
    settings = settings_or_exit("private API", get_settings)
    engine = make_engine(settings.db_url)
    try:
        migrate(engine)
        with make_sessionmaker(engine)() as session:
            result: KeyOut | list[KeyOut]
            if args.action == "create":
                result = crud_keys.create_key(
                    session,
                    name=key_in.name,
                    admin=key_in.admin,
                    expires_at=crud_keys.expiry(key_in.expires_in_days),
                    max_queued_tasks=key_in.max_queued_tasks,
                    max_running_tasks=key_in.max_running_tasks,
                )
                audit.record(session, HOST, "key.create", result.id, name=result.name, admin=result.admin)
            elif args.action == "list":
                result = [crud_keys.key_out(key) for key in crud_keys.list_keys(session)]
            elif args.action == "revoke":
                key = crud_keys.get_key(session, args.key_id)
                if key.revoked_at is None:
                    audit.record(session, HOST, "key.revoke", key.id, name=key.name)
                result = crud_keys.key_out(crud_keys.revoke_key(session, key))
            else:
                key = crud_keys.get_key(session, args.key_id)
                result = crud_keys.rotate_key(session, key)
                audit.record(session, HOST, "key.rotate", key.id, name=key.name)
            session.commit()
    except ApiError as exc:
        print(f"python -m private_api keys: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    _print(result, args.json)
    return 0
