"""The user's SLURM GPU limits per partition cap the fleet's growth like max_gpus does."""

from grace_hpc.fleet.limits import ANY, cap_partitions, parse_limits
from grace_hpc.fleet.policy import Decision, Reason

# the shape of `sacctmgr -n -P show assoc user=U format=Partition,GrpTRES,MaxTRES` (the test cluster has no limits:
# its one line is "||")
ASSOC = """||
|gres/gpu=8,cpu=64|
a100|cpu=16|gres/gpu=2
t4|gres/gpu=4|gres/gpu=3,mem=10G
"""


def test_gpu_limits_are_read_per_partition_and_the_smallest_wins():
    assert parse_limits(ASSOC) == {ANY: 8, "a100": 2, "t4": 3}
    assert parse_limits("||\n") == {}


def test_growth_is_trimmed_to_the_partition_limit_and_the_global_one():
    decisions = {"big": Decision(4, Reason.OVERLOADED, ""), "small": Decision(9, Reason.OVERLOADED, ""),
                 "other": Decision(9, Reason.OVERLOADED, "")}
    capped = cap_partitions(decisions, actual={"big": 1, "small": 1, "other": 1},
                            gpus={"big": 1, "small": 1, "other": 1},
                            partition_of={"big": "a100", "small": "t4", "other": "l4"},
                            limits={ANY: 8, "a100": 2, "t4": 3})
    assert {n: d.desired for n, d in capped.items()} == {"big": 2, "small": 3, "other": 8}
    assert capped["big"].reason is Reason.GPU_CAP and "a100 limit 2 allows 2" in capped["big"].detail
