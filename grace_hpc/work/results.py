"""Exactly-once results: parquet parts written to a temp name, fsynced, then renamed into place.

Layout: OUTPUT/shard-I-of-N/part-00000.parquet, part-00001.parquet, ... and `_done.json` when the shard
finished (names starting with `_` or `.` are ignored by `pd.read_parquet(dir)`).

- A part becomes visible only by `os.replace` of a complete, fsynced file, so a reader never sees half a part;
  a killed worker leaves at most a `.tmp` file, which the next run deletes (pipx `pipx_metadata_file.py` `write()`
  does the same for its metadata).
- On start the done-set (row id, model) is rebuilt from the existing parts and those rows are skipped; rows that
  were in flight when the worker died were never written, so they are redone: none lost, none twice.
- One writer per shard: an exclusive `filelock` on the shard folder (released by the kernel if the holder is
  SIGKILLed), so a requeued job cannot race a still-running twin.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import pyarrow as pa
import pyarrow.parquet as pq

from grace_hpc.errors import WorkError

__all__ = ["SCHEMA", "KEY", "DONE", "ResultStore", "part_files", "iter_parts"]

SCHEMA = pa.schema([
    ("row_id", pa.string()),
    ("position", pa.int64()),
    ("model", pa.string()),  # as requested (a model name or a category)
    ("task", pa.string()),
    ("status", pa.string()),  # "ok" | "failed"
    ("error", pa.string()),
    ("input", pa.string()),  # the input row, JSON
    ("output", pa.string()),  # per question: text / parsed / option distributions, JSON
    ("served_model", pa.string()),  # the `model` field of the answer: what actually ran
    ("engine", pa.string()),  # from the router's x-grace-engine header, else the engine's own /v1/models owner
    ("quantization", pa.string()),  # from the router's x-grace-quantization header, when known
    ("sampling", pa.string()),  # the sampling parameters sent, JSON
    ("seed", pa.int64()),
    ("requests", pa.int64()),
    ("attempts", pa.int64()),
    ("latency_s", pa.float64()),
    ("shard", pa.string()),
    ("finished_at", pa.string()),
])
KEY = ("row_id", "model")
DONE = "_done.json"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")


def part_files(shard_dir: Path) -> list[Path]:
    """Complete parts, in write order (temp files never match)."""
    if not shard_dir.is_dir():
        return []
    parts = [p for p in shard_dir.iterdir() if _PART.match(p.name)]
    return sorted(parts, key=lambda p: int(_PART.match(p.name)[1]))  # type: ignore[index]  # filtered above


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultStore:
    """The parts of one shard. Use as a context manager: it holds the shard's writer lock."""

    def __init__(self, shard_dir: Path) -> None:
        self.dir = shard_dir
        self._lock = filelock.FileLock(str(shard_dir / ".lock"))
        self._next = 0

    def __enter__(self) -> ResultStore:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout as exc:
            raise WorkError(
                f"{self.dir}: another worker is writing this shard (lock {self._lock.lock_file}); "
                "wait for it or cancel its job before rerunning"
            ) from exc
        for stale in self.dir.glob(".part-*.tmp"):
            stale.unlink()  # a part whose writer died before the rename: its rows are not in the done-set
        parts = part_files(self.dir)
        self._next = int(_PART.match(parts[-1].name)[1]) + 1 if parts else 0  # type: ignore[index]
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def done_keys(self) -> set[tuple[str, str]]:
        """(row_id, model) of every row already answered. Failed rows stay recorded but are not "done": a rerun
        tries them again and merge keeps the answer (see merge.py)."""
        done: set[tuple[str, str]] = set()
        for part in part_files(self.dir):
            try:
                table = pq.read_table(part, columns=[*KEY, "status"])
            except (pa.ArrowException, OSError) as exc:
                raise WorkError(f"{part}: unreadable result part ({exc}); move it away and rerun the shard") from exc
            cols = [table.column(c).to_pylist() for c in (*KEY, "status")]
            done.update((rid, model) for rid, model, status in zip(*cols, strict=True) if status == "ok")
        return done

    def write_part(self, records: list[dict[str, Any]]) -> Path:
        """Write `records` as the next part, atomically. Returns its path."""
        final = self.dir / f"part-{self._next:05d}.parquet"
        tmp = self.dir / f".part-{self._next:05d}.tmp"
        table = pa.Table.from_pylist(records, schema=SCHEMA)
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.dir)  # the rename itself must survive a node crash
        self._next += 1
        return final

    def mark_done(self, summary: dict[str, Any]) -> None:
        """Record that the shard finished (merge checks every shard has one)."""
        tmp = self.dir / ".done.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
        os.replace(tmp, self.dir / DONE)


def iter_parts(output: Path) -> Iterator[Path]:
    """Every complete part under OUTPUT/shard-*/, shard by shard."""
    for shard_dir in sorted(output.glob("shard-*-of-*")):
        yield from part_files(shard_dir)


def rows_written(output: Path) -> int:
    """Records in the complete parts under OUTPUT (answers and failures; from the parquet footers only)."""
    total = 0
    for part in iter_parts(output):
        try:
            total += pq.ParquetFile(part).metadata.num_rows
        except OSError:
            continue  # renamed away by a concurrent cleanup: counted next time
    return total
