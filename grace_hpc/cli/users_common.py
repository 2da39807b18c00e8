"""Where the key store and the ledger live, shared by `route`, `keys` and `usage`.

Defaults sit beside the registry (its folder is 0700): `keys.json` and `ledger.sqlite`; `$GRACE_KEY_STORE` and
`$GRACE_LEDGER` (a path or a `postgresql://` DSN) override them, and so do `--key-store` / `--ledger`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from grace_hpc.cli.common import config_dir
from grace_hpc.ledger.sql import LEDGER_ENV
from grace_hpc.users.keys import KEYS_FILE_ENV, KeyStore


def add_key_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-store", metavar="FILE",
                   help=f"per-user key store (default: ${KEYS_FILE_ENV}, else keys.json beside the registry)")


def add_ledger(p: argparse.ArgumentParser, *, off: bool) -> None:
    extra = "; `off` to keep none" if off else ""
    p.add_argument("--ledger", metavar="PATH|DSN",
                   help=f"usage ledger: a SQLite file or postgresql://... (default: ${LEDGER_ENV}, else "
                        f"ledger.sqlite beside the registry{extra})")


def _registry_folder(args: argparse.Namespace) -> Path:
    from grace_hpc.registry.store import Registry

    if getattr(args, "registry", None):
        return Path(args.registry).absolute().parent
    config = config_dir(args)
    return Registry.from_cluster(config.cluster(), config).path.parent


def key_store(args: argparse.Namespace) -> KeyStore:
    chosen = args.key_store or os.environ.get(KEYS_FILE_ENV)
    return KeyStore(Path(chosen) if chosen else _registry_folder(args) / "keys.json", time.time)


def ledger_target(args: argparse.Namespace) -> str | None:
    """The ledger's path or DSN; None when `--ledger off`."""
    chosen = args.ledger or os.environ.get(LEDGER_ENV)
    if chosen == "off":
        return None
    return chosen or str(_registry_folder(args) / "ledger.sqlite")
