"""The log-prob canary's verdicts, kept in a small JSON file beside the endpoint registry.

    <registry folder>/logprob-verdicts.json   {"schema_version": 1, "verdicts": [LogprobVerdict, ...]}

Workers write a verdict per (endpoint, model) after checking an engine (grace_hpc/work/canary.py); `grace-hpc status` and the
router's `/status` read it to show whether each endpoint's prompt log-probs can be trusted. A verdict for a known
engine version is reused by later workers (the canary is then skipped); an unknown version is always re-checked.
Written with a temp file and os.replace, so a reader sees one whole version; the last writer of a key wins.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["FILENAME", "LogprobVerdict", "verdict_path", "read_verdicts", "record_verdict", "cached_verdict",
           "verdict_for_endpoint"]

FILENAME = "logprob-verdicts.json"
SCHEMA_VERSION = 1


class LogprobVerdict(BaseModel):
    """Whether one engine's echoed prompt log-probs agreed with its own next-token log-probs."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    endpoint: str  # registry endpoint id (X-Grace-Served-By), else the base URL the worker used
    model: str
    engine: str  # e.g. "vllm", "llama-cpp-python server", "grace-scoring"
    version: str | None  # None: the engine does not say (never reused from the cache)
    passed: bool
    detail: str  # what was compared (and the numbers, when it failed)
    checked_at: float

    @property
    def key(self) -> tuple[str, str]:
        return self.endpoint, self.model


def verdict_path(registry_path: Path) -> Path:
    return registry_path.with_name(FILENAME)


def read_verdicts(path: Path) -> list[LogprobVerdict]:
    """The verdicts in `path`; none when the file is missing or unreadable (a verdict is advisory, not state)."""
    try:
        data = json.loads(path.read_text())
        return [LogprobVerdict.model_validate(v) for v in data.get("verdicts", [])]
    except (OSError, ValueError, AttributeError, ValidationError):
        return []


def record_verdict(path: Path, verdict: LogprobVerdict) -> None:
    """Add or replace the verdict for its (endpoint, model), atomically."""
    kept = [v for v in read_verdicts(path) if v.key != verdict.key]
    body = {"schema_version": SCHEMA_VERSION, "verdicts": [v.model_dump() for v in (*kept, verdict)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_verdict(path: Path, engine: str, version: str | None, model: str) -> LogprobVerdict | None:
    """A stored verdict for this engine *version* and model (any endpoint), if there is one."""
    if version is None:
        return None
    for v in reversed(read_verdicts(path)):
        if (v.engine, v.version, v.model) == (engine, version, model):
            return v
    return None


def verdict_for_endpoint(verdicts: list[LogprobVerdict], endpoint_id: str, base_url: str,
                         names: tuple[str, ...]) -> Mapping[str, object] | None:
    """What `status` and `/status` show for one endpoint: the latest verdict of any of its model names."""
    found = [v for v in verdicts if v.endpoint in (endpoint_id, base_url) and v.model in names]
    if not found:
        return None
    latest = max(found, key=lambda v: v.checked_at)
    return {"passed": latest.passed, "engine": latest.engine, "version": latest.version,
            "checked_at": latest.checked_at}
