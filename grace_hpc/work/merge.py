"""Merging a run's shards into one parquet file, checking that every row is there exactly once.

Two passes:
1. read (row_id, model, status) of every part (streaming: memory holds the keys) and choose one record per key:
   the answer if there is one, else the latest failure (a rerun retries failed rows, so a key can have failures
   before its answer);
2. gather the chosen records, sort them by input position (then model) and write OUTPUT/merged.parquet via a
   temp file and a rename (memory holds the merged table: the size of the result, not of the parts' history).
Two *answers* for one key mean two different runs share the folder (e.g. 2 and 4 shards): an error, never a guess.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from grace_hpc.errors import WorkError
from grace_hpc.work.flat import flat_record
from grace_hpc.work.results import DONE, KEY, SCHEMA, iter_parts

__all__ = ["MergeSummary", "merge", "flat_path", "failures"]

_SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


class MergeSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    output: str
    rows: int
    ok: int
    failed: int
    superseded_failures: int  # failures of rows answered by a later rerun (dropped from the merged file)
    by_model: dict[str, dict[str, int]]
    shards: int
    incomplete_shards: list[str]  # shard folders without _done.json: rerun them (same command) to finish

    @property
    def complete(self) -> bool:
        return not self.incomplete_shards and self.failed == 0


def _shard_dirs(output: Path) -> list[Path]:
    dirs = [d for d in output.iterdir() if d.is_dir() and _SHARD_DIR.match(d.name)] if output.is_dir() else []
    if not dirs:
        raise WorkError(f"{output}: no shard-I-of-N folders; is this the --output of `grace-hpc work`?")
    counts = {int(_SHARD_DIR.match(d.name)[2]) for d in dirs}  # type: ignore[index]  # filtered above
    if len(counts) > 1:
        raise WorkError(f"{output}: holds runs with different shard counts {sorted(counts)}; merge one run per folder")
    return sorted(dirs, key=lambda d: int(_SHARD_DIR.match(d.name)[1]))  # type: ignore[index]


def flat_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}-flat{target.suffix}")


def _write(table: pa.Table, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def merge(output: Path, target: Path | None = None, *, flat: bool = False) -> MergeSummary:
    """Merge OUTPUT's shards into `target` (default OUTPUT/merged.parquet), sorted by input position; with `flat`,
    also `<target>-flat.parquet` (flat.py: one column per input field, option probability and grid value)."""
    dirs = _shard_dirs(output)
    count = int(_SHARD_DIR.match(dirs[0].name)[2])  # type: ignore[index]
    present = {d.name for d in dirs}
    incomplete = [f"shard-{i}-of-{count}" for i in range(count)
                  if f"shard-{i}-of-{count}" not in present or not (output / f"shard-{i}-of-{count}" / DONE).exists()]
    parts = list(iter_parts(output))

    chosen: dict[tuple[str, str], tuple[int, int, bool]] = {}  # key -> (part, row, answered)
    superseded = 0
    for pi, part in enumerate(parts):
        table = pq.read_table(part, columns=[*KEY, "status"])
        rows = zip(*(table.column(c).to_pylist() for c in (*KEY, "status")), strict=True)
        for ri, (rid, model, status) in enumerate(rows):
            key, answered = (rid, model), status == "ok"
            prev = chosen.get(key)
            if prev is not None and prev[2] and answered:
                raise WorkError(
                    f"row {rid} (model {model}) is answered twice ({parts[prev[0]]} and {part}): two runs wrote "
                    "into this folder; keep one run's shard folders and merge again"
                )
            if prev is not None:
                superseded += 1
                if prev[2]:
                    continue  # keep the answer over a (later) failure
            chosen[key] = (pi, ri, answered)  # else the answer, or the latest failure

    keep: dict[int, list[int]] = {}
    for pi, ri, _ in chosen.values():
        keep.setdefault(pi, []).append(ri)
    target = target or output / "merged.parquet"
    chosen_rows = [pq.read_table(part).take(pa.array(sorted(keep[pi]), pa.int64())).cast(SCHEMA)
                   for pi, part in enumerate(parts) if pi in keep]
    merged = pa.concat_tables(chosen_rows) if chosen_rows else SCHEMA.empty_table()
    merged = merged.sort_by([("position", "ascending"), ("model", "ascending")])  # input order, then model
    by_model: dict[str, Counter[str]] = {}
    for model, status in zip(merged.column("model").to_pylist(), merged.column("status").to_pylist(), strict=True):
        by_model.setdefault(model, Counter())[status] += 1
    _write(merged, target)
    if flat:
        rows = [flat_record(r) for r in merged.to_pylist()]
        _write(pa.Table.from_pylist(rows), flat_path(target))
    ok = sum(c["ok"] for c in by_model.values())
    return MergeSummary(
        output=str(target), rows=len(chosen), ok=ok, failed=len(chosen) - ok, superseded_failures=superseded,
        by_model={m: dict(c) for m, c in sorted(by_model.items())}, shards=len(dirs), incomplete_shards=incomplete,
    )


def failures(merged: Path, limit: int = 5) -> list[dict[str, str]]:
    """The first failed rows of a merged file (row id, model, error), for the summary a person reads."""
    table = pq.read_table(merged, columns=[*KEY, "error", "status"])
    failed = table.filter(pc.equal(table.column("status"), "failed")).slice(0, limit)
    return [dict(zip(("row_id", "model", "error"), r, strict=True)) for r in
            zip(*(failed.column(c).to_pylist() for c in (*KEY, "error")), strict=True)]
