"""Logging for the long-running processes (router, supervisor): UTC timestamps, levels, logger names, on stderr.

    configure_logging()   once, from a CLI entry point; `$GRACE_LOG_LEVEL` (DEBUG, INFO, WARNING, ...) sets the
                          level, INFO by default. Library code only ever calls logging.getLogger(__name__).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping

LEVEL_ENV = "GRACE_LOG_LEVEL"
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"


def configure_logging(environ: Mapping[str, str] = os.environ) -> None:
    """Send grace_hpc's records (and warnings from libraries) to stderr, one timestamped line each."""
    name = environ.get(LEVEL_ENV, "INFO").upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        from grace_hpc.errors import ConfigError

        raise ConfigError(f"${LEVEL_ENV}={name!r} is not a log level; use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]  # idempotent: a second call replaces, never duplicates, the handler
    root.setLevel(logging.WARNING)
    logging.getLogger("grace_hpc").setLevel(level)
