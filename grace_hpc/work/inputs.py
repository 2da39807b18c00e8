"""Reading input rows in bounded chunks (csv, jsonl, parquet), so memory does not grow with the input size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from grace_hpc.errors import WorkError

__all__ = ["FORMATS", "input_format", "read_columns", "iter_rows"]

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def input_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise WorkError(f"{path}: unknown input format {path.suffix!r}; use one of {', '.join(sorted(FORMATS))}")
    if not path.is_file():
        raise WorkError(f"{path}: input file not found")
    if path.stat().st_size == 0:
        raise WorkError(f"{path}: input file is empty")
    return fmt


def _chunks(path: Path, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    fmt = input_format(path)
    try:
        if fmt == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pylist()
            return
        if fmt == "csv":
            # Cells as written (dtype=str, no NA guessing): "007" stays "007" in prompts and in row ids.
            reader = pd.read_csv(path, chunksize=chunk_rows, dtype=str, keep_default_na=False)
        else:
            reader = pd.read_json(path, lines=True, chunksize=chunk_rows, dtype=False)
        with reader:
            for frame in reader:
                yield frame.to_dict(orient="records")
    except pd.errors.EmptyDataError as exc:
        raise WorkError(f"{path}: no columns found (is the file empty or not {fmt}?)") from exc
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise WorkError(f"{path}: cannot read as {fmt} ({exc})") from exc


def read_columns(path: Path) -> list[str]:
    """The input's column names (reads one small chunk, or the parquet schema)."""
    if input_format(path) == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    for chunk in _chunks(path, 1):
        if chunk:
            return list(chunk[0])
    raise WorkError(f"{path}: the input has no rows (a header only?); nothing to do")


def iter_rows(path: Path, chunk_rows: int = 2048) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, row) for every row, reading `chunk_rows` at a time."""
    position = 0
    for chunk in _chunks(path, chunk_rows):
        for row in chunk:
            yield position, row
            position += 1
    if position == 0:
        raise WorkError(f"{path}: the input has no rows")
