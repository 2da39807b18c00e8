"""Ledger writes off the request path: the event loop appends to a deque; a thread commits one batch per interval.

A killed router loses only what it had not committed: the batch being written (taken at most `flush_s` plus one
commit before the kill) and the records queued behind it.
If the database is unavailable the batch is kept and retried next interval, up to `max_pending` records; beyond
that the oldest are dropped and counted (`dropped`), so a dead database never grows the router without bound.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from grace_hpc.ledger.records import LedgerRecord
from grace_hpc.ledger.sql import Ledger, LedgerError

log = logging.getLogger("grace_hpc.ledger")

FLUSH_S = 0.2
MAX_PENDING = 200_000


class LedgerWriter:
    def __init__(self, ledger: Ledger, *, flush_s: float = FLUSH_S, max_pending: int = MAX_PENDING) -> None:
        self.ledger = ledger
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.pending: deque[LedgerRecord] = deque()
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grace-ledger", daemon=True)
        self._thread.start()

    def add(self, record: LedgerRecord) -> None:
        """O(1) and lock-free (deque.append is atomic): safe on the event loop."""
        self.pending.append(record)

    def close(self) -> None:
        """Stop the thread after a last flush, and close the connection."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.ledger.close()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        batch = [self.pending.popleft() for _ in range(len(self.pending))]
        if not batch:
            return
        try:
            self.ledger.write(batch)
        except LedgerError as exc:
            self.last_error = str(exc)
            log.warning("ledger write failed, keeping %d record(s) to retry: %s", len(batch), exc)
            self.pending.extendleft(reversed(batch))
            excess = len(self.pending) - self.max_pending
            for _ in range(max(0, excess)):
                self.pending.popleft()
            self.dropped += max(0, excess)
            return
        self.written += len(batch)
        self.last_error = None
