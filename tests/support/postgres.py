"""A throwaway PostgreSQL cluster for the ledger tests: Debian's server binaries, initdb + pg_ctl in a temp dir,
listening on 127.0.0.1 only, trust authentication, stopped (and its files removed with the temp dir) afterwards.

As root the server runs as the `postgres` system user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian puts them under /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextmanager
def postgres_cluster(folder: Path, port: int) -> Iterator[str]:
    """Start a cluster in `folder` on 127.0.0.1:`port`; yields a DSN for database `grace` (stopped on exit)."""
    bin_dir = server_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        folder.chmod(0o700)
        folder.parent.chmod(0o711)  # mkdtemp's 0700: the server user must pass through
    run = lambda argv: subprocess.run(_as_server_user(argv), check=True, capture_output=True, text=True)  # noqa: E731
    run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "grace", "--no-sync"])
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "server.log"), "-w", "start"])
    try:
        run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "grace", "grace"])
        yield f"postgresql://grace@127.0.0.1:{port}/grace"
    finally:
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
