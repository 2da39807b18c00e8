"""Ledger fixtures: every ledger test runs on SQLite and on a real PostgreSQL server (tests/support/postgres.py).

Import both names into a test module: `from tests.support.ledger_fixtures import ledger_target, postgres_dsn`."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from grace_hpc.serve.supervisor import free_port
from tests.support.postgres import postgres_cluster, server_bin


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server for this module's tests (about 3 s to start), stopped and deleted afterwards.

    Its folder is its own (not pytest's temp tree, which concurrent pytest runs prune and which the server user
    could not enter)."""
    if server_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (tests/run-all.sh installs Debian's postgresql as root)")
    folder = Path(tempfile.mkdtemp(prefix="grace-postgres-"))
    try:
        with postgres_cluster(folder / "cluster", free_port("127.0.0.1")) as dsn:
            yield dsn
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger: a SQLite path, or a new database on the module's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    import psycopg

    dsn = request.getfixturevalue("postgres_dsn")
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + "/" + name


def read_all(target: str) -> list:
    """Every record in the ledger at `target` (a connection opened and closed for it)."""
    from grace_hpc.ledger import open_ledger

    ledger = open_ledger(target)
    try:
        return ledger.read(0.0)
    finally:
        ledger.close()
