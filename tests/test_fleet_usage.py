"""fleet report: GPU-hours held (sacct) against busy (the controller's ledger), per partition, inside the window."""

from datetime import datetime

import pytest

from grace_hpc.errors import SchedulerError
from grace_hpc.fleet.usage import MAX_GAP_S, UsageEntry, UsageLedger, busy_seconds, held_seconds, parse_held, report


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# recorded on the test cluster (Slurm 22.05.8, AccountingStorageTRES without gres/gpu), plus a cluster that tracks it
SACCT = """108|grace-zero-4ade9d-s|t4|billing=1,cpu=1,node=1|2026-12-01T17:50:45|2026-12-01T17:52:45
109|grace-zero-4ade9d-s|t4|billing=2,cpu=2,gres/gpu=2,node=1|2026-12-01T17:00:00|Unknown
110|grace-zero-4ade9d-s|t4||Unknown|Unknown
"""


def test_sacct_lines_give_gpus_where_accounting_tracks_them_and_start_and_end():
    a, b, c = parse_held(SACCT)
    assert (a.gpus, a.start, a.end) == (None, ts("2026-12-01T17:50:45"), ts("2026-12-01T17:52:45"))
    assert (b.gpus, b.end) == (2, None)
    assert c.start is None


def test_an_unexpected_sacct_line_is_an_error_not_a_guess():
    with pytest.raises(SchedulerError, match="cannot parse"):
        parse_held("108|t4|x")


def test_held_counts_the_plans_gpus_where_accounting_does_not_and_clips_to_the_window():
    jobs = parse_held(SACCT)
    lo, hi = ts("2026-12-01T17:51:45"), ts("2026-12-01T18:00:00")
    held = held_seconds(jobs, {"grace-zero-4ade9d-s": 1}, lo, hi)
    # job 108: 60 s of its 120 inside the window x 1 planned GPU; job 109 (still running): 2 GPUs x the window
    assert held == {"t4": 60 + 2 * (hi - lo)}


def test_busy_integrates_the_needed_replicas_between_passes_and_a_stopped_controller_counts_only_up_to_the_gap():
    entries = [UsageEntry(0, "s", "t4", 2, running=3, needed=1), UsageEntry(10, "s", "t4", 2, running=3, needed=3),
               UsageEntry(20, "s", "t4", 2, running=1, needed=5)]
    assert busy_seconds(entries, 0, 20 + 10 * MAX_GAP_S) == {"t4": 10 * 2 + 10 * 6 + MAX_GAP_S * 2}


def test_the_report_puts_held_and_busy_side_by_side(tmp_path):
    [job] = parse_held("1|grace-d-s|t4||2026-12-01T10:00:00|Unknown\n")
    ledger = UsageLedger(tmp_path / "fleet-usage.jsonl")
    ledger.append([UsageEntry(job.start, "s", "t4", 1, running=1, needed=1)])
    ledger.append([UsageEntry(job.start + 60, "s", "t4", 1, running=1, needed=0)])
    with (tmp_path / "fleet-usage.jsonl").open("a") as f:
        f.write('{"at": 120, "serv')  # a controller killed mid-line
    [row] = report([job], {"grace-d-s": 1}, ledger.read(), lo=job.start, hi=job.start + 3600)
    assert (row.partition, row.gpu_hours_held, row.gpu_hours_busy) == ("t4", 1.0, round(60 / 3600, 4))
    assert row.busy_share == pytest.approx(60 / 3600, abs=1e-3)
