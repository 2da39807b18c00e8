"""Typed routing tables (routing/*.yaml): task category -> ordered models -> cloud fallback."""

from __future__ import annotations

from pydantic import Field, model_validator

from grace_hpc.config.catalog import Frozen


class Category(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    models: tuple[str, ...] = ()  # local models, best first
    cloud: tuple[str, ...] = ()  # cloud providers to try after the local models, in order
    cloud_only: bool = False  # seed 002's CLOUD_REQUIRED: never served locally
    cold_start_wait_s: float = Field(default=0.0, ge=0)  # hold a request this long for a scaled-to-zero model

    @model_validator(mode="after")
    def _has_target(self) -> Category:
        if not self.models and not self.cloud:
            raise ValueError(f"category {self.name!r} lists neither models nor cloud providers")
        if self.cloud_only and not self.cloud:
            raise ValueError(f"category {self.name!r} is cloud_only but names no cloud provider")
        return self


class CloudProvider(Frozen):
    """An OpenAI-compatible API. The key is read from `api_key_env` at request time, never stored."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")
    model_map: dict[str, str] = {}  # local model or category -> provider model; "*" is the default
    default_model: str
    price_in_per_mtok: float = Field(default=0.0, ge=0)
    price_out_per_mtok: float = Field(default=0.0, ge=0)


class Routing(Frozen):
    categories: tuple[Category, ...] = Field(min_length=1)
    cloud: tuple[CloudProvider, ...] = ()
    max_queue_depth: int = Field(default=64, gt=0)  # per endpoint; above it the next model/cloud is used
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    #: one request's whole budget across failover attempts, up to its answer's first byte (streams then run on
    #: `read_timeout_s` between bytes)
    request_deadline_s: float = Field(default=600.0, gt=0)
    #: what a request without `model` is routed to (a category, `category:NAME` or a model name); unset: such a
    #: request is a 400, as on OpenAI's API, rather than silently served by some model
    default_target: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _refs(self) -> Routing:
        names = [c.name for c in self.categories]
        if "default" not in names:
            raise ValueError(f"a 'default' category is required (have {names})")
        if self.default_target and self.default_target.startswith("category:") and \
                self.default_target.removeprefix("category:") not in names:
            raise ValueError(f"default_target {self.default_target!r} names no category; categories: {names}")
        providers = {p.name for p in self.cloud}
        for c in self.categories:
            missing = [p for p in c.cloud if p not in providers]
            if missing:
                raise ValueError(
                    f"category {c.name!r} names unknown cloud provider(s) {missing}; defined: {sorted(providers)}"
                )
        return self

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise KeyError(name)

    def provider(self, name: str) -> CloudProvider:
        for p in self.cloud:
            if p.name == name:
                return p
        raise KeyError(name)
