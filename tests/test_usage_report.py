"""`grace-hpc usage`: the ledger summed by user, category, model, partition or day, with the cloud-equivalent
line; GPU-hours from sacct's recorded output."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import ConfigError, SchedulerError
from grace_hpc.launch.launcher import manifest_of
from grace_hpc.launch.manifest import Submitted
from grace_hpc.ledger import LedgerRecord, Served, open_ledger
from grace_hpc.slurm.accounting import gpu_hours_argv, parse_gpu_hours
from grace_hpc.usage import By, parse_since, reference_price, summarize
from tests.support.cli import grace
from tests.support.ledger_fixtures import ledger_target, postgres_dsn  # noqa: F401  (fixtures)
from tests.support.router_env import routing

ROOT = Path(__file__).resolve().parents[1]
DAY1 = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
DAY2 = datetime(2026, 12, 1, 9, tzinfo=UTC).timestamp()
TABLE = routing({
    "categories": [{"name": "default", "models": ["tiny"], "cloud": ["cheap"]},
                   {"name": "code", "models": ["coder"], "cloud": ["dear"]},
                   {"name": "bio", "models": ["tiny"]}],
    "cloud": [{"name": "cheap", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "CHEAP", "default_model": "c",
               "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0},
              {"name": "dear", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "DEAR", "default_model": "d",
               "price_in_per_mtok": 10.0, "price_out_per_mtok": 20.0}],
})


def local(ts: float, user: str, category: str, model: str, partition: str, prompt: int, completion: int,
          status: int = 200) -> LedgerRecord:
    return LedgerRecord(ts, user, "k", category, None, Served.LOCAL, f"{model}-1", model, partition, prompt,
                        completion, 0.1, status, 0.0)


RECORDS = [
    local(DAY1, "ada", "code", "coder", "h100", 1_000_000, 500_000),  # at `dear`: 10 + 10 = $20
    local(DAY2, "bob", "default", "tiny", "t4", 2_000_000, 1_000_000),  # at `cheap`: 2 + 2 = $4
    local(DAY2, "bob", "bio", "tiny", "t4", 1_000_000, 0),  # no provider: `default`'s (cheap): $1
    LedgerRecord(DAY2, "ada", "k", "code", None, Served.CLOUD, "dear", "d", None, 100_000, 100_000, 1.0, 200, 3.0),
    LedgerRecord(DAY2, "ada", "k", "code", None, Served.NONE, None, None, None, 0, 0, 0.0, 429, 0.0),
]


def test_rows_by_user_say_requests_tokens_spend_local_share_and_the_cloud_equivalent():
    report = summarize(RECORDS, By.USER, 0.0, reference_price(TABLE))
    ada, bob = (r.as_dict() for r in report.rows)
    assert ada == {"group": "ada", "requests": 3, "errors": 1, "local": 1, "cloud": 1, "local_share": 0.5,
                   "prompt_tokens": 1_100_000, "completion_tokens": 600_000, "cloud_usd": 3.0,
                   "cloud_equivalent_usd": 23.0}
    assert (bob["local_share"], bob["cloud_usd"], bob["cloud_equivalent_usd"]) == (1.0, 0.0, 5.0)
    assert report.total.cloud_equivalent_usd == pytest.approx(28.0) and report.total.requests == 5


@pytest.mark.parametrize(("by", "groups"), [
    (By.CATEGORY, ["bio", "code", "default"]),
    (By.MODEL, ["-", "coder", "d", "tiny"]),
    (By.PARTITION, ["-", "cloud:dear", "h100", "t4"]),
    (By.DAY, ["2026-11-30", "2026-12-01"]),
])
def test_every_grouping_partitions_the_same_totals(by, groups):
    report = summarize(RECORDS, by, 0.0, reference_price(TABLE))
    assert [r.group for r in report.rows] == groups
    assert sum(r.requests for r in report.rows) == 5
    assert sum(r.cloud_equivalent_usd for r in report.rows) == pytest.approx(28.0)


def test_since_accepts_durations_and_dates_and_says_what_it_wants_otherwise():
    assert parse_since("7d", 1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("12h", 100_000.0) == 100_000.0 - 12 * 3600
    assert parse_since("2026-12-01", 0.0) == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    with pytest.raises(ConfigError, match="7d, 12h, 30m"):
        parse_since("last week", 0.0)


def test_usage_cli_prints_json_csv_and_a_table_with_the_budget_meeting_line(tmp_path, ledger_target):  # noqa: F811
    ledger = open_ledger(ledger_target)
    ledger.write(RECORDS)
    ledger.close()
    (tmp_path / "routing.yaml").write_text(json.dumps(TABLE.model_dump(mode="json")))
    common = ["--ledger", ledger_target, "--routing", str(tmp_path / "routing.yaml"), "--since", "2026-11-01"]
    as_json = json.loads(grace(tmp_path, "usage", *common, "--by", "category", "--json").stdout)
    assert [r["group"] for r in as_json["rows"]] == ["bio", "code", "default"]
    assert as_json["total"]["cloud_equivalent_usd"] == 28.0
    assert as_json["gpu_note"]  # the temp folder has no launch manifests: said, not an error
    rows = list(csv.reader(io.StringIO(grace(tmp_path, "usage", *common, "--by", "day", "--csv").stdout)))
    assert rows[0][0] == "day" and [r[0] for r in rows[1:]] == ["2026-11-30", "2026-12-01", "total"]
    table = grace(tmp_path, "usage", *common)
    assert table.returncode == 0, table.stderr
    assert "would have cost $28.00 in the cloud" in table.stdout and "cloud spend $3.00" in table.stdout


def test_sacct_gpu_hours_are_summed_per_partition_from_recorded_output():
    recorded = ("812|t4|3600|billing=2,cpu=2,gres/gpu=2,gres/gpu:t4=2,mem=2G,node=1\n"
                "813_1|h100|1800|billing=1,cpu=1,gres/gpu=1,mem=1G,node=1\n"
                "813_2|h100|1800|billing=1,cpu=1,gres/gpu=1,mem=1G,node=1\n"
                "814|cpu|7200|billing=1,cpu=1,mem=1G,node=1\n"
                "815|t4||\n")  # pending: no elapsed, no allocation yet
    assert parse_gpu_hours(recorded, {}) == {"t4": 2.0, "h100": 1.0, "cpu": 0.0}
    # accounting without gres/gpu in AccountingStorageTRES: the GPUs launch asked for
    assert parse_gpu_hours("900|l4|7200|billing=1,cpu=1,node=1\n901_3|l4|3600|cpu=1\n", {"900": 2, "901": 4}) == \
        {"l4": 8.0}
    with pytest.raises(SchedulerError, match="cannot parse"):
        parse_gpu_hours("812 t4 3600\n", {})
    assert gpu_hours_argv(["813_1", "813_2", "812"], DAY2)[-4:] == ["-o", "JobID,Partition,ElapsedRaw,AllocTRES",
                                                                     "-j", "812,813"]


@pytest.mark.slurm
def test_usage_reads_gpu_hours_of_the_fleets_jobs_from_the_real_sacct(slurm_cluster, tiny_project):
    job = subprocess.run(["sbatch", "--parsable", "-p", "t4", "--gres=gpu:t4:1", "-c", "1", "--mem=100M",
                          "-o", str(tiny_project / "job.out"), "--wrap", "sleep 60"],
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        config = ConfigDir.discover(str(tiny_project / "configs"))
        manifest_of(config, config.cluster(), "pair").add(Submitted(
            "pair", "on-t4", 0, job, "slurm", "t4", ("tiny",), 1, time.time(), str(tiny_project)))
        open_ledger(str(tiny_project / "ledger.sqlite")).close()
        deadline = time.monotonic() + 120
        while True:
            report = grace(tiny_project, "usage", "--ledger", str(tiny_project / "ledger.sqlite"), "--routing",
                           str(ROOT / "routing" / "local.yaml"), "--json")
            assert report.returncode == 0, report.stderr
            hours = json.loads(report.stdout)["gpu_hours"]
            if hours.get("t4", 0) > 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert 0 < hours["t4"] < 0.1  # one GPU for well under six minutes
    finally:
        subprocess.run(["scancel", job], check=False)
