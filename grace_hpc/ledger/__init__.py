"""The usage ledger: one record per request (`records.py`), stored in SQLite (WAL) or PostgreSQL (`sql.py`),
written off the request path in batches (`writer.py`). See docs/usage.md."""

from grace_hpc.ledger.records import LedgerRecord, Served
from grace_hpc.ledger.sql import Ledger, open_ledger
from grace_hpc.ledger.writer import LedgerWriter

__all__ = ["Ledger", "LedgerRecord", "LedgerWriter", "Served", "open_ledger"]
