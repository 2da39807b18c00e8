"""Which endpoint next: a pure function over a registry snapshot, the health book's view and the request.

No sockets, no clock reads, no environment: everything arrives as arguments, so every rule is a unit test.

    resolve()  - the request's `model` / `X-Grace-Category` -> a Route (category + ordered local models)
    plan()     - a Route -> the ordered attempts: endpoints of model 1 (least loaded first), of model 2, ..., clouds
    fits(), too_long(), undecided() - whether a prompt fits an endpoint's context, by byte bounds or exact counts
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

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


class MissingModel(ValueError):
    """The request names no model and the routing table names no `default_target`."""

    MESSAGE = ("you must provide a model parameter (a model name, a category or `category:NAME`; see GET /v1/models),"
               " or send the X-Grace-Category header")


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
    No `model` (and no header): the table's `default_target`, else MissingModel.

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
    if not model:
        if routing.default_target is None:
            raise MissingModel(MissingModel.MESSAGE)
        model = routing.default_target
    name = model.removeprefix(CATEGORY_PREFIX)
    if name in cat_names:
        category = routing.category(name)
        return Route(category, () if category.cloud_only else category.models, None)
    if model.startswith(CATEGORY_PREFIX):
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
    prompt: PromptSize | None = None,
    counted: Mapping[str, int] | None = None,
    cloud_ready: Sequence[str] = (),
    rotation: int = 0,
    stale_before: float | None = None,
) -> list[Attempt]:
    """The attempts for one request, best first.

    Local: for each model in order, its `ready` endpoints that are neither ejected nor `stale` (no heartbeat since
    `stale_before`), whose context may fit the prompt (`fits` is not False) and whose queue is not over
    `max_queue_depth`, least outstanding requests per unit of `weights()` first (ties rotate with `rotation`, so
    sequential requests spread too). Then the
    category's cloud providers whose key is set (`cloud_ready`): reached only when every local attempt failed, was
    filtered out, or the category is cloud-only."""
    prompt, counted = prompt or EMPTY_PROMPT, counted or {}
    attempts: list[Attempt] = []
    seen: set[str] = set()  # an endpoint serving two listed names (model and alias) is tried once
    for model in route.models:
        eligible = [
            r for r in records
            if serves(r, model) and _routable(r, loads.get(r.id, IDLE), routing, stale_before)
            and fits(r, prompt, counted) is not False
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


class PromptSize(NamedTuple):  # one per request: a tuple is built in a third of a frozen dataclass's time
    """Certain bounds on a request's prompt tokens, from its UTF-8 bytes alone.

    `low`: ~4 bytes per token is the best English BPE vocabularies do, so no tokenizer needs fewer. `high`: a
    byte-level BPE (Llama 3, Qwen, GPT-2 family) or a byte-fallback SentencePiece (Llama 2, Mistral) never needs
    more than one token a byte, plus what a chat template adds around each message."""

    low: int = 0
    high: int = 0

    @property
    def bytes_only(self) -> str:
        return f"at least {self.low}"


EMPTY_PROMPT = PromptSize()
#: tokens a chat template may add per message (role headers, separators) and per request (BOS, generation prompt)
TEMPLATE_TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS_PER_REQUEST = 16


def prompt_size(body: Mapping[str, object]) -> PromptSize:
    """The bounds for a chat, completion or embedding body (`messages`, `prompt`, `input`)."""
    size = 0
    for t in _texts(body):
        size += len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass"))
    messages = body.get("messages")
    n = len(messages) if isinstance(messages, list) else 0
    return PromptSize(size // 4, size + TEMPLATE_TOKENS_PER_MESSAGE * n + TEMPLATE_TOKENS_PER_REQUEST)


def prompt_text(body: Mapping[str, object]) -> str:
    """The request's text (message contents, prompt or input) joined by newlines: what a tokenizer counts."""
    return "\n".join(_texts(body))


def _texts(body: Mapping[str, object]) -> list[str]:
    # bodies are parsed JSON: `dict` and `list`, so exact type checks (an ABC's isinstance costs ~10x more)
    parts: list[str] = []
    for key in ("messages", "prompt", "input"):
        stack = [body.get(key)]
        while stack:  # iterative: a client controls the nesting depth
            item = stack.pop()
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict):
                if "content" in item:
                    stack.append(item["content"])
                if "text" in item:
                    stack.append(item["text"])
            elif isinstance(item, list):
                stack.extend(reversed(item))
    return parts


def fits(record: EndpointRecord, prompt: PromptSize, counted: Mapping[str, int]) -> bool | None:
    """Whether the prompt fits the endpoint's `max_model_len`: exactly when its tokenizer counted it (`counted`, by
    endpoint id), else by the byte bounds; None when only the engine's tokenizer can tell."""
    limit = record.plan.max_model_len
    if limit is None:
        return True
    if record.id in counted:
        return counted[record.id] < limit
    if prompt.low >= limit:
        return False
    return True if prompt.high < limit else None


def undecided(route: Route, records: Sequence[EndpointRecord], prompt: PromptSize, counted: Mapping[str, int],
              stale_before: float | None = None) -> list[EndpointRecord]:
    """Ready endpoints of the route whose fit only their tokenizer can decide (to count on before planning)."""
    maybe = [r for r in records if fits(r, prompt, counted) is None]  # cheapest test first: usually empty
    return _candidates(route, maybe, stale_before) if maybe else []


@dataclass(frozen=True)
class TooLong:
    limit: int  # the largest context among the candidates
    tokens: str  # the count, or "at least N" from the byte bound

    def message(self) -> str:
        return (f"This model's maximum context length is {self.limit} tokens. However, your request has "
                f"{self.tokens} prompt tokens. Please reduce the length of the messages or prompt.")


def too_long(route: Route, records: Sequence[EndpointRecord], prompt: PromptSize, counted: Mapping[str, int],
             stale_before: float | None = None) -> TooLong | None:
    """When the prompt certainly exceeds every ready endpoint of the route: the client's mistake (HTTP 400,
    `context_length_exceeded`), not an outage. None when some endpoint may take it, or none is ready at all."""
    candidates = _candidates(route, records, stale_before)
    if not candidates or any(fits(r, prompt, counted) is not False for r in candidates):
        return None
    exact = [counted[r.id] for r in candidates if r.id in counted]
    return TooLong(max(r.plan.max_model_len or 0 for r in candidates),
                   str(max(exact)) if exact else prompt.bytes_only)


def _candidates(route: Route, records: Sequence[EndpointRecord], stale_before: float | None) -> list[EndpointRecord]:
    return [r for r in records if r.state is EndpointState.READY and not stale(r, stale_before)
            and any(serves(r, m) for m in route.models)]


def _routable(record: EndpointRecord, load: LoadView, routing: Routing, stale_before: float | None) -> bool:
    if record.state is not EndpointState.READY or load.ejected or stale(record, stale_before):
        return False
    return load.in_flight < capacity(record) + routing.max_queue_depth


def _dedupe(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
