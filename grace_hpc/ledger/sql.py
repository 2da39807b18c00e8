"""Ledger storage: SQLite in WAL mode (one router, the default) or PostgreSQL (several routers, one ledger).

Both speak the same SQL; only the connection, the placeholder and the column types differ. A `Ledger` holds one
connection and is used from one thread at a time (the writer's thread, or a reader's).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grace_hpc.errors import ConfigError, GraceError
from grace_hpc.ledger.records import COLUMNS, LedgerRecord

LEDGER_ENV = "GRACE_LEDGER"
_TYPES = {"ts": "DOUBLE PRECISION NOT NULL", "prompt_tokens": "BIGINT NOT NULL", "completion_tokens": "BIGINT NOT NULL",
          "latency_s": "DOUBLE PRECISION NOT NULL", "status": "INTEGER NOT NULL", "cost_usd": "DOUBLE PRECISION NOT NULL"}
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS grace_ledger ("
    + ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)
    + ")",
    "CREATE INDEX IF NOT EXISTS grace_ledger_ts ON grace_ledger (ts)",
    "CREATE INDEX IF NOT EXISTS grace_ledger_user_ts ON grace_ledger (username, ts)",
)


#: rows per INSERT statement. A driver releases the GIL around each statement it runs (sqlite3 around every
#: sqlite3_step, once per row under executemany), and every release hands the GIL to the router's event loop and
#: back, a context switch each way when both threads share a core: ~50 us of the loop's CPU per request at
#: 3,000 req/s (bench/router.py --ledger). Multi-row VALUES make that one release per 400 rows. 400 rows x 14
#: columns = 5,600 parameters: under SQLite's limit (32,766 since 3.32; 999 before, hence 3.32 as the floor, see
#: sqlite.org/limits.html) and PostgreSQL's 65,535.
ROWS_PER_INSERT = 400


class LedgerError(GraceError):
    """The ledger database cannot be opened, written or read."""


class Ledger:
    """One connection to the ledger database."""

    def __init__(self, conn: Any, placeholder: str, errors: tuple[type[BaseException], ...], where: str) -> None:
        self.conn = conn
        self.errors = errors
        self.where = where  # a path or the DSN without its password, for messages
        self._row_marks = "(" + ", ".join([placeholder] * len(COLUMNS)) + ")"
        self._insert_head = f"INSERT INTO grace_ledger ({', '.join(COLUMNS)}) VALUES "
        self._insert_full = self._insert(ROWS_PER_INSERT)
        self._select = f"SELECT {', '.join(COLUMNS)} FROM grace_ledger WHERE ts >= {placeholder} ORDER BY ts"
        self._spend = (f"SELECT username, SUM(cost_usd) FROM grace_ledger WHERE ts >= {placeholder} AND cost_usd > 0 "
                       "GROUP BY username")
        self._run(lambda cur: [cur.execute(s) for s in SCHEMA], "create the ledger's table")

    def write(self, records: Sequence[LedgerRecord]) -> None:
        """Insert `records` in one transaction (all or none), `ROWS_PER_INSERT` rows a statement."""
        chunks = [records[i:i + ROWS_PER_INSERT] for i in range(0, len(records), ROWS_PER_INSERT)]

        def insert(cur: Any) -> None:
            for chunk in chunks:
                sql = self._insert_full if len(chunk) == ROWS_PER_INSERT else self._insert(len(chunk))
                cur.execute(sql, [value for record in chunk for value in record.row()])

        self._run(insert, "write to the ledger")

    def _insert(self, rows: int) -> str:
        return self._insert_head + ", ".join([self._row_marks] * rows)

    def read(self, since: float) -> list[LedgerRecord]:
        rows = self._run(lambda cur: cur.execute(self._select, (since,)).fetchall(), "read the ledger")
        return [LedgerRecord.from_row(tuple(r)) for r in rows]

    def cloud_spend(self, since: float) -> dict[str, float]:
        """Cloud spend per user since `since` (unix time)."""
        rows = self._run(lambda cur: cur.execute(self._spend, (since,)).fetchall(), "read the ledger")
        return {user: float(total) for user, total in rows}

    def close(self) -> None:
        self.conn.close()

    def _run(self, work: Any, what: str) -> Any:
        try:
            cur = self.conn.cursor()
            try:
                result = work(cur)
            finally:
                cur.close()
            self.conn.commit()
            return result
        except self.errors as exc:
            try:
                self.conn.rollback()
            except self.errors:
                pass  # the connection is gone; the original error says why
            raise LedgerError(f"{self.where}: cannot {what} ({type(exc).__name__}: {exc})") from exc


def open_sqlite(path: Path, *, create: bool = True) -> Ledger:
    if not create and not path.exists():
        raise ConfigError(f"{path}: no ledger there; routers write one when started with --ledger (the default is "
                          "ledger.sqlite beside the registry), or pass --ledger PATH|DSN")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # isolation_level=None + explicit BEGIN would work too; the default opens a transaction per write batch
        conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # readers (`usage`) never block the router's writes
        conn.execute("PRAGMA synchronous=NORMAL")  # a committed batch survives a killed router (not a power cut)
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot open the SQLite ledger ({exc})") from exc
    path.chmod(0o600)
    return Ledger(conn, "?", (sqlite3.Error,), str(path))


def open_postgres(dsn: str) -> Ledger:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError("a PostgreSQL ledger needs psycopg: pip install 'grace-hpc[postgres]'") from exc
    where = _without_password(dsn)
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise LedgerError(f"{where}: cannot connect to the PostgreSQL ledger ({str(exc).strip()})") from None
    return Ledger(conn, "%s", (psycopg.Error,), where)


def open_ledger(target: str | Path, *, create: bool = True) -> Ledger:
    """`postgresql://...` (or `postgres://`, or a `host=... dbname=...` string) opens PostgreSQL; else a SQLite path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")) or "dbname=" in text:
        return open_postgres(text)
    return open_sqlite(Path(text).expanduser(), create=create)


def _without_password(dsn: str) -> str:
    """The DSN for messages: a password is replaced (URL `user:pw@` or `password=...`)."""
    dsn = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)
    return re.sub(r"password=\S+", "password=***", dsn)
