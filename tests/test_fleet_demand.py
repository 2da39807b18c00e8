"""The demand file: written whole or not at all, read back strictly, summed per server."""

import errno
import os
from pathlib import Path

import pytest

from grace_hpc.errors import RegistryError
from grace_hpc.fleet.demand import Demand, DemandFile, ModelDemand
from grace_hpc.fleet.policy import Sample
from grace_hpc.registry.fs import LocalFileSystem, RetryPolicy


class StaleOnce(LocalFileSystem):
    """A shared file system that answers the first read with NFS's "Stale file handle"."""

    def __init__(self) -> None:
        self.failed = False

    def read(self, path: Path) -> tuple[bytes, os.stat_result]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.ESTALE, "Stale file handle")
        return super().read(path)


NO_WAIT = RetryPolicy(sleep=lambda _s: None)


def test_what_the_router_writes_the_controller_reads(tmp_path):
    demand = Demand(12.5, {"a": ModelDemand(3, 1), "b": ModelDemand(0, 0)})
    DemandFile(tmp_path).write(demand)
    assert DemandFile(tmp_path, StaleOnce(), NO_WAIT).read() == demand
    assert [p.name for p in tmp_path.iterdir()] == ["demand.json"]  # no temp file left behind


def test_no_router_yet_is_no_demand(tmp_path):
    assert DemandFile(tmp_path).read() is None


def test_a_foreign_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "demand.json").write_text('{"schema_version": 7}')
    with pytest.raises(RegistryError, match=r"demand\.json: not a demand document \(schema_version is not 1\)"):
        DemandFile(tmp_path).read()


def test_a_server_sample_sums_the_models_it_packs():
    demand = Demand(5.0, {"a": ModelDemand(3, 1), "b": ModelDemand(2, 0), "c": ModelDemand(9, 9)})
    assert demand.sample(["a", "b", "unseen"]) == Sample(5.0, 5, 1)
