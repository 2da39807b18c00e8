"""Demand: what the router sees per model, written beside the registry (`demand.json`) for the fleet controller.

    {"schema_version": 1, "at": 1764600000.0, "models": {"<model>": {"outstanding": 3, "waiting": 0}}}

`outstanding` counts requests in flight to the model's endpoints, `waiting` requests held for a model with no ready
endpoint (a cold start). The router replaces the whole file atomically through the registry's file-system seam, so
the controller reads the old document or the new one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from grace_hpc.errors import RegistryError
from grace_hpc.fleet.policy import Sample
from grace_hpc.registry.fs import DEFAULT_RETRY, FileSystem, LocalFileSystem, RetryPolicy, with_retries

SCHEMA_VERSION = 1
FILE_NAME = "demand.json"


@dataclass(frozen=True)
class ModelDemand:
    outstanding: int = 0
    waiting: int = 0


@dataclass(frozen=True)
class Demand:
    at: float
    models: Mapping[str, ModelDemand]

    def sample(self, models: Iterable[str]) -> Sample:
        """One server's sample: the sum over the models it serves."""
        mine = [self.models.get(m, ModelDemand()) for m in models]
        return Sample(self.at, sum(d.outstanding for d in mine), sum(d.waiting for d in mine))

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "at": self.at,
                "models": {m: {"outstanding": d.outstanding, "waiting": d.waiting} for m, d in sorted(self.models.items())}}


def parse(doc: object, source: str) -> Demand:
    """A demand document, checked; RegistryError naming `source` when it is not one."""
    try:
        if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version is not {SCHEMA_VERSION}")
        models = {str(m): ModelDemand(int(d.get("outstanding", 0)), int(d.get("waiting", 0)))
                  for m, d in doc["models"].items()}
        return Demand(float(doc["at"]), models)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistryError(f"{source}: not a demand document ({exc}); the router rewrites it every second") from exc


class DemandFile:
    """`demand.json` in `folder` (the registry's folder). Creating one touches no file."""

    def __init__(self, folder: Path, fs: FileSystem | None = None, retry: RetryPolicy = DEFAULT_RETRY):
        self.path = Path(folder) / FILE_NAME
        self.fs: FileSystem = fs or LocalFileSystem()
        self.retry = retry

    def write(self, demand: Demand) -> None:
        data = json.dumps(demand.to_json()).encode()

        def publish() -> None:
            self.fs.mkdir(self.path.parent)  # the router may start before any server created the registry
            self.fs.replace(self.fs.write_temp(self.path.parent, f".{FILE_NAME}", data), self.path)

        with_retries(self.retry, "write the demand file", self.path, publish)

    def read(self) -> Demand | None:
        """The last demand the router wrote; None when no router has written one yet."""
        def load() -> bytes | None:
            try:
                return self.fs.read(self.path)[0]
            except FileNotFoundError:
                return None

        data = with_retries(self.retry, "read the demand file", self.path, load)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"{self.path}: not JSON ({exc}); the router rewrites it every second") from exc
        return parse(doc, str(self.path))
