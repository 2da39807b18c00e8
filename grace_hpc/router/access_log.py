"""The optional per-request access log: one JSON object a line, written by a thread, never by the event loop.

Fields: `ts` (unix seconds), `request_id`, `route`, `category`, `model` (as requested), `served_by` (endpoint id or
`cloud:NAME`, `-` when nothing served it), `status` (499 when the client hung up), `latency_ms`, `prompt_tokens`,
`completion_tokens`. Never the prompt, the answer or a key.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: nginx's code for "client closed the request": the access log's status of a request whose client hung up
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class AccessRecord:
    request_id: str
    route: str
    category: str | None
    model: str | None
    served_by: str
    status: int
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class AccessLog:
    """`with AccessLog(path) as log: log.write(record)`; the file is appended to by a QueueListener thread."""

    def __init__(self, path: Path) -> None:
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = logging.FileHandler(path, encoding="utf-8", delay=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._handler = handler
        self._logger = logging.Logger("grace_hpc.router.access")  # not in the logging tree: its own file only
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._logger.propagate = False

    def write(self, record: AccessRecord) -> None:
        line = json.dumps({"ts": round(time.time(), 3), **asdict(record)}, separators=(",", ":"))
        self._logger.info(line)

    def __enter__(self) -> AccessLog:
        self._listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.stop()
        self._handler.close()
