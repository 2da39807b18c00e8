"""Load YAML files into the typed config models, turning every problem into one actionable ConfigError."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from grace_hpc.config.catalog import Catalog
from grace_hpc.config.cluster import Cluster
from grace_hpc.config.deployment import Deployment
from grace_hpc.config.routing import Routing
from grace_hpc.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

#: The checkout this package lives in: its configs/ and routing/ are the defaults.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lookup(data: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation (`Partition`, `tuple[ServerSpec, ...]`, `Paths | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _model_at(cls: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config model whose keys live at `loc` (list indexes skipped)."""
    model: type[BaseModel] | None = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        model = _inner_model(field.annotation) if field else None
    return model


def _where(loc: tuple[int | str, ...], data: Any) -> str:
    """`servers[0].time (entry 'x')`: the key path, naming the entry so the user finds it without counting."""
    where = _key_path(loc)
    if len(loc) >= 2 and isinstance(loc[1], int):
        entry = _lookup(data, loc[:2])
        if isinstance(entry, dict) and "name" in entry:
            where += f" (entry {entry['name']!r})"
    return where or "<top level>"


def _unknown_key(cls: type[BaseModel], loc: tuple[int | str, ...], data: Any) -> tuple[str, str | None]:
    """(problem text, the known key it is probably a misspelling of)."""
    key = str(loc[-1])
    model = _model_at(cls, loc[:-1])
    known = sorted(model.model_fields) if model else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known) if known else "see README.md"
    return f"{_where(loc[:-1], data)}: unknown key {key!r} ({hint})", close[0] if close else None


def format_validation_error(source: str, exc: ValidationError, data: Any, cls: type[BaseModel]) -> str:
    """`file: key.path: message (got VALUE); other.key: ...`: every problem, in one line. A misspelt key is named
    with the key it probably means, and the "Field required" it causes for that key is not repeated."""
    errors = exc.errors(include_url=False)
    problems: list[str] = []
    explained: set[tuple[int | str, ...]] = set()  # required keys whose absence a misspelling explains
    for e in (e for e in errors if e["type"] == "extra_forbidden"):
        loc = tuple(e["loc"])
        text, meant = _unknown_key(cls, loc, data)
        problems.append(text)
        if meant:
            explained.add((*loc[:-1], meant))
    nested = {tuple(e["loc"])[:i] for e in errors for i in range(len(e["loc"]))}
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden" or (e["type"] == "missing" and loc in explained):
            continue
        if e["type"] == "too_short" and loc in nested:  # "at least 1 item": only because its items were invalid
            continue
        msg = e["msg"].removeprefix("Value error, ")
        value = repr(e.get("input"))
        value = value if len(value) <= 80 else value[:77] + "..."
        got = "" if e["type"] == "missing" or "(got" in msg else f" (got {value})"
        problems.append(f"{_where(loc, data)}: {msg}{got}")
    return f"{source}: " + "; ".join(problems)


def load_yaml_model(path: Path, cls: type[M]) -> M:
    """Parse `path` as YAML and validate it into `cls`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}not valid YAML ({problem})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc, data, cls)) from exc


@dataclass(frozen=True)
class ConfigDir:
    """A project's configuration: `configs/` (cluster, models, deployments, tasks) beside `routing/`."""

    root: Path  # the configs/ folder

    @classmethod
    def discover(cls, config_dir: str | Path | None = None, environ: dict[str, str] | None = None) -> ConfigDir:
        """--config-dir, else $GRACE_CONFIG_DIR, else ./configs, else this checkout's configs/."""
        env = os.environ if environ is None else environ
        for candidate in (config_dir, env.get("GRACE_CONFIG_DIR"), "configs"):
            if candidate and Path(candidate).is_dir():
                return cls(Path(candidate).resolve())
            if candidate and candidate != "configs":
                raise ConfigError(f"{candidate}: config directory not found (expected cluster.yaml, models.yaml)")
        return cls(PROJECT_ROOT / "configs")

    @property
    def project(self) -> Path:
        return self.root.parent

    def resolve(self, path: Path) -> Path:
        """A path from a config file: absolute as is, relative to the project folder otherwise."""
        return path if path.is_absolute() else self.project / path

    def cluster(self) -> Cluster:
        return load_yaml_model(self.root / "cluster.yaml", Cluster)

    def catalog(self) -> Catalog:
        return load_yaml_model(self.root / "models.yaml", Catalog)

    def deployment_path(self, name_or_path: str) -> Path:
        p = Path(name_or_path)
        if p.suffix in (".yaml", ".yml") and p.exists():
            return p
        candidate = self.root / "deployments" / f"{p.stem}.yaml"
        if candidate.exists():
            return candidate
        known = sorted(x.stem for x in (self.root / "deployments").glob("*.yaml"))
        raise ConfigError(f"deployment {name_or_path!r} not found; known deployments: {', '.join(known) or 'none'}")

    def deployment(self, name_or_path: str) -> Deployment:
        return load_yaml_model(self.deployment_path(name_or_path), Deployment)

    def routing_path(self, name_or_path: str | None = None) -> Path:
        p = Path(name_or_path or "default")
        if p.suffix in (".yaml", ".yml"):
            return p
        return self.project / "routing" / f"{p.stem}.yaml"

    def routing(self, name_or_path: str | None = None) -> Routing:
        return load_yaml_model(self.routing_path(name_or_path), Routing)
