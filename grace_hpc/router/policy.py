"""Which endpoint next: a pure function over a registry snapshot, the health book's view and the request.

No sockets, no clock reads, no environment: everything arrives as arguments, so every rule is a unit test.

    resolve()  - the request's `model` / `X-Grace-Category` -> a Route (category + ordered local models)
    plan()     - a Route -> the ordered attempts: endpoints of model 1 (least loaded first), of model 2, ..., clouds
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from grace_hpc.config.routing import Category, CloudProvider, Routing
from grace_hpc.registry.records import EndpointRecord, EndpointState

#: capacity weight of an endpoint whose plan does not say how many sequences it batches (llama.cpp -np default)
DEFAULT_CAPACITY = 4
CATEGORY_PREFIX = "category:"


class UnknownTarget(LookupError):
    """The request names no model, alias or category the router knows; carries what exists."""

    def __init__(self, name: str, categories: Sequence[str], models: Sequence[str]) -> None:
        super().__init__(name)
        self.name = name
        self.categories = tuple(categories)
        self.models = tuple(models)

    def message(self) -> str:
        return (
            f"unknown model or category {self.name!r}; categories: {', '.join(self.categories)}; "
            f"models: {', '.join(self.models) or 'none live'} (use `category:NAME` or a model name)"
        )


@dataclass(frozen=True)
class Route:
    category: Category
    models: tuple[str, ...]  # local models to try, in order (empty when cloud_only)
    requested: str | None  # the model name the client asked for, when it asked for one


class LoadView(Protocol):
    """What planning reads of an endpoint's health (the health book's entries provide it)."""

    @property
    def in_flight(self) -> int: ...

    @property
    def ejected(self) -> bool: ...


@dataclass(frozen=True)
class Load:
    """A LoadView value (an endpoint the health book has not seen is idle and healthy)."""

    in_flight: int = 0
    ejected: bool = False


IDLE = Load()


@dataclass(frozen=True)
class EndpointAttempt:
    record: EndpointRecord


@dataclass(frozen=True)
class CloudAttempt:
    provider: CloudProvider
    model: str  # the provider's model name for this request


Attempt = EndpointAttempt | CloudAttempt


def serves(record: EndpointRecord, model: str) -> bool:
    return model in (record.model, record.served_model_name)


def capacity(record: EndpointRecord) -> int:
    return max(1, record.plan.max_num_seqs or DEFAULT_CAPACITY)


def weights(records: Sequence[EndpointRecord]) -> dict[str, float]:
    """Load-balancing weight per endpoint id: the measured output tokens/s (`grace-hpc bench`) when every one of
    `records` has one, else `capacity()` for all. A T4 and an H100 replica may both batch 256 sequences, but the
    H100 finishes them several times faster; measured weights send it proportionally more. Mixing the two units
    would compare tokens/s with sequences, so one missing measurement falls back for the whole set."""
    measured = {r.id: r.capacity.output_tokens_per_s for r in records if r.capacity is not None}
    return measured if len(measured) == len(records) else {r.id: float(capacity(r)) for r in records}


def stale(record: EndpointRecord, stale_before: float | None) -> bool:
    """Its supervisor stopped heartbeating before `stale_before` (unix time): the job may be frozen, preempted
    without cleanup or on a dead node, and the registry's reap only reports it. External endpoints (`registry add`)
    have no supervisor, so they are never stale."""
    return stale_before is not None and not record.external and record.heartbeat_at < stale_before


def known_models(routing: Routing, records: Sequence[EndpointRecord]) -> list[str]:
    """Every name a request may use: routing-table models plus live catalog names and served aliases."""
    names = {m for c in routing.categories for m in c.models}
    names.update(r.model for r in records)
    names.update(r.served_model_name for r in records)
    return sorted(names)


def resolve(
    routing: Routing, records: Sequence[EndpointRecord], model: str | None, category_header: str | None,
    known: Collection[str] | None = None,
) -> Route:
    """Category by header, `category:NAME` or a bare category name; else a model name or alias; else UnknownTarget.

    A named model is tried first and then, only if the client also named a category, that category's models;
    the cloud providers are the category's (the first category listing the model, else `default`)."""
    cat_names = [c.name for c in routing.categories]
    known = known_models(routing, records) if known is None else known  # callers may cache it per snapshot

    def unknown(name: str) -> UnknownTarget:
        return UnknownTarget(name, cat_names, sorted(known))

    header = (category_header or "").strip().removeprefix(CATEGORY_PREFIX)
    if header:
        if header not in cat_names:
            raise unknown(header)
        category = routing.category(header)
        if model and not model.startswith(CATEGORY_PREFIX) and model not in cat_names and model in known:
            return Route(category, _dedupe((model, *category.models)), model)
        return Route(category, () if category.cloud_only else category.models, None)
    name = (model or "default").removeprefix(CATEGORY_PREFIX)
    if name in cat_names:
        category = routing.category(name)
        return Route(category, () if category.cloud_only else category.models, None)
    if model is not None and model.startswith(CATEGORY_PREFIX):
        raise unknown(model)
    if name in known:
        catalog_names = {name} | {r.model for r in records if r.served_model_name == name}
        listing = [c for c in routing.categories if catalog_names.intersection(c.models)]
        category = listing[0] if listing else routing.category("default")
        return Route(category, (name,), name)
    raise unknown(name)


def plan(
    route: Route,
    routing: Routing,
    records: Sequence[EndpointRecord],
    loads: Mapping[str, LoadView],
    *,
    prompt_tokens: int = 0,
    cloud_ready: Sequence[str] = (),
    rotation: int = 0,
    stale_before: float | None = None,
) -> list[Attempt]:
    """The attempts for one request, best first.

    Local: for each model in order, its `ready` endpoints that are neither ejected nor `stale` (no heartbeat since
    `stale_before`), whose context fits the prompt and whose queue is not over `max_queue_depth`, least outstanding
    requests per unit of `weights()` first (ties rotate with `rotation`, so sequential requests spread too). Then the
    category's cloud providers whose key is set (`cloud_ready`): reached only when every local attempt failed, was
    filtered out, or the category is cloud-only."""
    attempts: list[Attempt] = []
    seen: set[str] = set()  # an endpoint serving two listed names (model and alias) is tried once
    for model in route.models:
        eligible = [
            r for r in records
            if serves(r, model) and _routable(r, loads.get(r.id, IDLE), routing, prompt_tokens, stale_before)
        ]
        if len(eligible) > 1:
            k = rotation % len(eligible)
            eligible = eligible[k:] + eligible[:k]  # rotate, then a stable sort keeps the rotation among equals
            weight = weights(eligible)
            eligible.sort(key=lambda r: (loads.get(r.id, IDLE).in_flight + 1) / weight[r.id])
        for r in eligible:
            if r.id not in seen:
                seen.add(r.id)
                attempts.append(EndpointAttempt(r))
    for name in route.category.cloud:
        if name in cloud_ready:
            provider = routing.provider(name)
            attempts.append(CloudAttempt(provider, cloud_model(provider, route)))
    return attempts


def cloud_model(provider: CloudProvider, route: Route) -> str:
    """The provider's model: mapped from the requested model, else from the category, else `*`, else the default."""
    for key in (route.requested, route.category.name, "*"):
        if key and key in provider.model_map:
            return provider.model_map[key]
    return provider.default_model


def estimate_prompt_tokens(body: Mapping[str, object]) -> int:
    """A cheap lower bound on the prompt's tokens (~4 UTF-8 bytes per token for English BPE vocabularies).

    Used only to skip endpoints whose `max_model_len` is certainly too short; an underestimate lets the engine
    answer 400 itself, which is passed through."""
    total = 0
    for key in ("prompt", "input", "messages"):
        total += _text_len(body.get(key))
    return total // 4


def _text_len(value: object) -> int:
    total, stack = 0, [value]
    while stack:  # iterative: a client controls the nesting depth
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, Mapping):
            stack.extend(v for k, v in item.items() if k in ("content", "text"))
        elif isinstance(item, list):
            stack.extend(item)
    return total


def _routable(
    record: EndpointRecord, load: LoadView, routing: Routing, prompt_tokens: int, stale_before: float | None
) -> bool:
    if record.state is not EndpointState.READY or load.ejected or stale(record, stale_before):
        return False
    if record.plan.max_model_len is not None and prompt_tokens >= record.plan.max_model_len:
        return False
    return load.in_flight < capacity(record) + routing.max_queue_depth


def _dedupe(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
