"""Arguments and output helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from grace_hpc.config.loader import ConfigDir


def add_common(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        help="folder with cluster.yaml, models.yaml, deployments/ (default: $GRACE_CONFIG_DIR or ./configs)",
    )
    if json_output:
        parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def _bounded_int(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what} (got {text!r})")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a bad one is argparse's one-line usage error, exit 2)."""
    return _bounded_int(text, 1, None, "a whole number >= 1")


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    return _bounded_int(text, 0, 65535, "a port number from 0 (any free port) to 65535")


def config_dir(args: argparse.Namespace) -> ConfigDir:
    return ConfigDir.discover(getattr(args, "config_dir", None))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def console():  # type: ignore[no-untyped-def]
    """A rich console; wide when output goes to a file or pipe, so tables stay readable in job logs."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)
