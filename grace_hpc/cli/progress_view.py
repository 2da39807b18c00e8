"""A live rich view of servers coming up (used by `launch --wait`)."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from grace_hpc.launch.launcher import LaunchResult
from grace_hpc.launch.waiting import Progress, wait_until_settled

_STYLE = {"ready": "green", "failed": "red", "starting": "yellow", "waiting": "dim"}


def _table(progress: list[Progress]) -> Table:
    table = Table(title="grace-hpc launch")
    for col in ("server", "job", "partition", "state", "detail"):
        table.add_column(col)
    for p in progress:
        table.add_row(p.job.server, p.job.job_id, p.job.partition, f"[{_STYLE[p.state]}]{p.state}",
                      p.detail.splitlines()[0][:100] if p.detail else "")
    return table


def watch_launch(result: LaunchResult, *, timeout_s: float) -> list[Progress]:
    console = Console(stderr=True)
    with Live(_table([]), console=console, refresh_per_second=4, transient=not console.is_terminal) as live:
        final = wait_until_settled(result.registry, [*result.kept, *result.submitted], result.jobs, timeout_s=timeout_s,
                                   on_tick=lambda p: live.update(_table(p)))
    if not console.is_terminal:
        console.print(_table(final))
    return final
