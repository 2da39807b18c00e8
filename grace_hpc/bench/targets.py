"""Which servers to measure: endpoints from the registry (each measured directly, with its own key), or one model or
category through the router (`--through-router URL`, key from $GRACE_ROUTER_KEY)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from grace_hpc.errors import ConfigError
from grace_hpc.registry.keys import read_key_file
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.router.policy import CATEGORY_PREFIX


@dataclass(frozen=True)
class Selection:
    """At most one of these is set (the CLI's mutually exclusive `--model/--category/--endpoint`); none: every
    ready endpoint (`--all`)."""

    model: str | None = None
    category: str | None = None
    endpoint: str | None = None

    def describe(self) -> str:
        """What was asked for (a selection of nothing in particular matches any ready endpoint)."""
        if self.endpoint:
            return f"called {self.endpoint!r}"
        return f"serving model {self.model!r}" if self.model else f"serving category {self.category!r}"


@dataclass(frozen=True)
class Target:
    """One server (or the router) to load: where, which `model` to ask for, and what is known about it."""

    name: str  # endpoint id, or "router:<model>"
    base_url: str  # ends in /v1
    model: str  # the request's `model` field
    catalog_model: str | None = None
    engine: str | None = None
    gpu_type: str | None = None
    partition: str | None = None
    endpoint_id: str | None = None  # set when measured directly (its capacity may be recorded)
    api_key: str | None = field(default=None, repr=False)  # never printed, never in the JSON

    @property
    def metrics_url(self) -> str | None:
        """The engine's Prometheus text (vLLM serves it at the root; llama.cpp with --metrics); None via the router."""
        return None if self.endpoint_id is None else self.base_url.removesuffix("/v1") + "/metrics"


def select(records: Sequence[EndpointRecord], selection: Selection) -> list[EndpointRecord]:
    """The ready endpoints matching `selection`; ConfigError saying what is there when nothing matches."""
    ready = [r for r in records if r.state is EndpointState.READY]
    if selection.endpoint:
        chosen = [r for r in ready if r.id == selection.endpoint]
    elif selection.model:
        chosen = [r for r in ready if selection.model in (r.model, r.served_model_name)]
    elif selection.category:
        chosen = [r for r in ready if selection.category in r.categories]
    else:
        chosen = ready
    if not ready:
        raise ConfigError("no endpoint is ready to measure: `grace-hpc launch` starts servers (`grace-hpc status` "
                          "shows where they are)")
    if not chosen:
        live = ", ".join(sorted(f"{r.id} ({r.model})" for r in ready))
        raise ConfigError(f"no ready endpoint is {selection.describe()}; ready endpoints: {live}")
    return sorted(chosen, key=lambda r: r.id)


def endpoint_target(record: EndpointRecord) -> Target:
    return Target(
        name=record.id, base_url=record.base_url, model=record.served_model_name, catalog_model=record.model,
        engine=record.engine, gpu_type=record.gpu_type, partition=record.partition, endpoint_id=record.id,
        api_key=read_key_file(record.api_key_file) if record.api_key_file else None,
    )


def router_target(url: str, selection: Selection, environ: Mapping[str, str]) -> Target:
    """The router as one target: a model name, or `category:C`; a single endpoint cannot be forced through it."""
    if selection.model:
        model = selection.model
    elif selection.category:
        model = CATEGORY_PREFIX + selection.category
    else:
        raise ConfigError("--through-router needs --model M or --category C (the router picks the endpoint; "
                          "use --endpoint without --through-router to measure one endpoint directly)")
    base = url.rstrip("/")
    return Target(name=f"router:{model}", base_url=base if base.endswith("/v1") else base + "/v1", model=model,
                  catalog_model=selection.model, api_key=environ.get("GRACE_ROUTER_KEY"))
