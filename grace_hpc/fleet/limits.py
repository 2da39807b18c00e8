"""The user's GPU limits per partition, from `sacctmgr show assoc` (`GrpTRES`/`MaxTRES` with `gres/gpu=N`), so the
controller does not submit replicas SLURM would only leave pending (`AssocGrpGRES`, `QOSMaxGpuPerUserLimit`).

    sacctmgr -n -P show assoc user=U format=Partition,GrpTRES,MaxTRES
    |gres/gpu=8,cpu=64|          <- no partition: the limit holds on every partition
    a100||gres/gpu=2
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from grace_hpc.fleet.policy import Decision, cap_gpus

_GPUS = re.compile(r"(?:^|,)gres/gpu=(?P<n>[0-9]+)(?:,|$)")
ANY = "*"


def parse_limits(text: str) -> dict[str, int]:
    """Partition (or ANY) -> the smallest GPU limit among its association lines; lines without one are skipped."""
    limits: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 3:
            continue
        partition, grp, per_job = fields
        found = [int(m["n"]) for tres in (grp, per_job) if (m := _GPUS.search(tres))]
        if found:
            key = partition or ANY
            limits[key] = min([*found, limits.get(key, min(found))])
    return limits


def cap_partitions(decisions: Mapping[str, Decision], actual: Mapping[str, int], gpus: Mapping[str, int],
                   partition_of: Mapping[str, str], limits: Mapping[str, int]) -> dict[str, Decision]:
    """Trim growth so each partition's servers hold at most the user's limit there (see `cap_gpus`)."""
    out = dict(decisions)
    for partition in sorted(set(partition_of.values())):
        limit = min((limits[k] for k in (partition, ANY) if k in limits), default=None)
        names: Sequence[str] = [n for n in out if partition_of[n] == partition]
        out.update(cap_gpus({n: out[n] for n in names}, actual, gpus, limit, what=f"{partition} limit"))
    return out
