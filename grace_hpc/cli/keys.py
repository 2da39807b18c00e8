"""`grace-hpc keys create|list|revoke|rotate`: per-user router keys (docs/usage.md).

A key is printed once, on stdout, by `create` and `rotate`; the store keeps only its salted digest.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from grace_hpc.cli.common import add_common, console, print_json
from grace_hpc.cli.users_common import add_key_store, key_store
from grace_hpc.errors import ConfigError
from grace_hpc.users.keys import KeyRecord


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="per-user router keys: create, list, revoke, rotate")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new key for a user (printed once)")
    create.add_argument("--user", required=True, help="who the key belongs to (letters, digits, . _ @ -)")
    create.add_argument("--budget-usd", type=_budget, metavar="X/month",
                        help="cloud spend per calendar month (UTC), e.g. 20 or 20/month; past it: local only")
    create.add_argument("--rpm", type=int, help="requests per minute (bursts up to the same number)")
    create.add_argument("--categories", type=_categories, metavar="C1,C2", help="the only categories it may use")
    create.add_argument("--expires", type=date.fromisoformat, metavar="YYYY-MM-DD", help="last day it works (UTC)")
    create.add_argument("--admin", action="store_true",
                        help="may also read /status, the dashboard and /metrics, and add models to the catalog")
    listing = actions.add_parser("list", help="keys by id, user and policy (never the keys)")
    revoke = actions.add_parser("revoke", help="stop a key (or every key of --user) at the router's next refresh")
    revoke.add_argument("key_id", nargs="?", help="the key's id (`keys list`)")
    revoke.add_argument("--user", help="revoke every active key of this user")
    rotate = actions.add_parser("rotate", help="a new key with the same policy; the old one is revoked")
    rotate.add_argument("key_id", help="the key's id (`keys list`)")
    for q in (create, listing, revoke, rotate):
        add_common(q, json_output=q is listing)
        add_key_store(q)
    p.set_defaults(handler=run)


def _budget(text: str) -> float:
    try:
        return float(text.removesuffix("/month"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount in USD per month, e.g. 20 or 20/month") from None


def _categories(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def run(args: argparse.Namespace) -> int:
    store = key_store(args)
    if args.action == "create":
        key, record = store.create(args.user, budget_usd_month=args.budget_usd, rpm=args.rpm,
                                   categories=args.categories, expires=args.expires, admin=args.admin)
        return _show_new(key, record, store.path)
    if args.action == "rotate":
        key, record = store.rotate(args.key_id)
        return _show_new(key, record, store.path)
    if args.action == "revoke":
        if bool(args.key_id) == bool(args.user):
            raise ConfigError("keys revoke: give a key id or --user NAME (one of them)")
        for record in store.revoke(key_id=args.key_id, user=args.user):
            print(f"revoked {record.key_id} (user {record.user}); routers stop accepting it at their next refresh")
        return 0
    records = store.records()
    if args.json:
        print_json([r.model_dump(mode="json", exclude={"digest"}) for r in records])
        return 0
    _table(records)
    return 0


def _show_new(key: str, record: KeyRecord, where: object) -> int:
    print(key)  # the only time the key is shown: stdout alone, so `KEY=$(grace-hpc keys create ...)` works
    print(f"{'admin ' if record.admin else ''}key {record.key_id} for user {record.user} stored (hashed) in {where};"
          " it is not shown again",
          file=sys.stderr)
    return 0


def _table(records: list[KeyRecord]) -> None:
    from rich.table import Table

    table = Table("id", "user", "state", "admin", "budget USD/month", "rpm", "categories", "expires")
    today = date.today()
    for r in records:
        state = "revoked" if r.revoked_at else "expired" if not r.active(today) else "active"
        table.add_row(r.key_id, r.user, state, "admin" if r.admin else "-",
                      "-" if r.budget_usd_month is None else f"{r.budget_usd_month:g}",
                      "-" if r.rpm is None else str(r.rpm), ",".join(r.categories) if r.categories else "all",
                      str(r.expires or "-"))
    console().print(table)
