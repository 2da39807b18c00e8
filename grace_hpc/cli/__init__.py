"""Command line: `python -m grace_hpc SUBCOMMAND` / `grace-hpc SUBCOMMAND`.

Each subcommand lives in its own module with an `add_parser(subparsers)` that declares its arguments
and sets `handler`; handlers are thin over library calls and return an exit code. One exit path:
a GraceError prints one line on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from grace_hpc import __version__
from grace_hpc.errors import GraceError

#: Subcommand modules, in the order `--help` lists them (config -> plan -> launch -> route -> work -> observe).
SUBCOMMANDS = (
    "models",
    "plan",
    "pull",
    "launch",
    "fleet",
    "serve",
    "stop",
    "registry",
    "route",
    "keys",
    "work",
    "status",
    "bench",
    "usage",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grace-hpc",
        description="Serve a zoo of open LLMs on SLURM GPU partitions behind one OpenAI-compatible router.",
    )
    parser.add_argument("--version", action="version", version=f"grace-hpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"grace_hpc.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"grace_hpc.cli.{name}":
                continue  # capability not built yet: no stub subcommand
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except GraceError as exc:
        print(f"grace-hpc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"grace-hpc {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`grace-hpc models --json | head`): not an error of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again (the recipe in Python's `signal` documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command killed by SIGPIPE
