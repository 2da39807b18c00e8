"""`work merge`: one record per row, answers over failures, and refusals where a guess would be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from grace_hpc.cli import main
from grace_hpc.errors import WorkError
from grace_hpc.work.merge import merge
from grace_hpc.work.results import DONE, ResultStore


def record(rid: str, status: str = "ok", model: str = "m") -> dict:
    return {"row_id": rid, "position": int(rid[1:]), "model": model, "task": "t", "status": status,
            "error": None if status == "ok" else "HTTP 503", "output": "{}"}


def shard(out: Path, name: str, *parts: list[dict], done: bool = True) -> None:
    with ResultStore(out / name) as store:
        for part in parts:
            store.write_part(part)
        if done:
            store.mark_done({"shard": name})


def test_answers_win_over_failures_and_unfinished_shards_are_listed(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    shard(tmp_path, "shard-0-of-2", [record("r0"), record("r2", "failed")], [record("r2")])
    shard(tmp_path, "shard-1-of-2", [record("r1", "failed")], done=False)
    s = merge(tmp_path)
    assert (s.rows, s.ok, s.failed, s.superseded_failures) == (3, 2, 1, 1)
    assert s.incomplete_shards == ["shard-1-of-2"] and not s.complete
    got = pd.read_parquet(s.output).sort_values("position")
    assert list(got.status) == ["ok", "failed", "ok"]

    assert main(["work", "merge", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["incomplete_shards"] == ["shard-1-of-2"]
    assert main(["work", "merge", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "failed r1 (m): HTTP 503" in text and "not finished: shard-1-of-2" in text


def test_two_answers_for_one_row_mean_two_runs_and_are_refused(tmp_path: Path) -> None:
    shard(tmp_path, "shard-0-of-2", [record("r0")])
    shard(tmp_path, "shard-1-of-2", [record("r0")])
    with pytest.raises(WorkError, match="answered twice"):
        merge(tmp_path)


def test_runs_with_different_shard_counts_are_refused(tmp_path: Path) -> None:
    shard(tmp_path, "shard-0-of-2", [record("r0")])
    shard(tmp_path, "shard-0-of-4", [record("r1")])
    with pytest.raises(WorkError, match="different shard counts"):
        merge(tmp_path)


def test_a_killed_writer_leaves_no_part_a_reader_could_take_for_complete(tmp_path: Path) -> None:
    folder = tmp_path / "shard-0-of-1"
    folder.mkdir()
    (folder / ".part-00000.tmp").write_bytes(b"PAR1 half a file")  # what SIGKILL during a write leaves
    with ResultStore(folder) as store:
        assert store.done_keys() == set()
        store.write_part([record("r0")])
        store.mark_done({})
    assert sorted(p.name for p in folder.iterdir()) == [".lock", DONE, "part-00000.parquet"]
    assert merge(tmp_path).rows == 1


def test_merged_rows_come_in_input_order_whatever_shard_wrote_them(tmp_path: Path) -> None:
    shard(tmp_path, "shard-1-of-2", [record("r3"), record("r1")])
    shard(tmp_path, "shard-0-of-2", [record("r2")], [record("r0")])
    got = pd.read_parquet(merge(tmp_path).output)
    assert list(got.row_id) == ["r0", "r1", "r2", "r3"]


def test_flat_has_one_column_per_input_field_option_probability_and_grid_value(tmp_path: Path) -> None:
    output = {"pct": {"grid": "state", "by_value": {
                  "0": {"probs": {"0%": 0.75, "100%": 0.25}, "mean": 25.0, "tokens": {" 0%": [" 0", "%"]}},
                  "1": {"probs": {"0%": 0.5, "100%": 0.5}, "mean": 50.0, "tokens": {}}}},
              "knowledge": {"probs": {"yes": 0.9, "no": 0.1}, "logprobs": {"yes": -1.0, "no": -3.0}},
              "say": {"text": "hello", "problems": ["no knowledge line"]}}
    rec = {**record("r0"), "input": json.dumps({"items": "exams", "n": 3}), "output": json.dumps(output)}
    shard(tmp_path, "shard-0-of-1", [rec])
    assert main(["work", "merge", str(tmp_path), "--flat"]) == 0
    flat = pd.read_parquet(tmp_path / "merged-flat.parquet")
    row = flat.iloc[0].to_dict()
    assert row["input.items"] == "exams" and row["input.n"] == 3
    assert row["pct.state=0.probs.0%"] == 0.75 and row["pct.state=1.probs.100%"] == 0.5
    assert row["pct.state=0.mean"] == 25.0 and row["knowledge.probs.yes"] == 0.9
    assert row["say.text"] == "hello" and json.loads(row["say.problems"]) == ["no knowledge line"]
    assert not [c for c in flat.columns if "tokens" in c or "logprobs" in c]  # audit fields stay in the JSON
