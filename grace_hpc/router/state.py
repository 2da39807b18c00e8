"""The router's state: the routing table, the registry snapshot, health books, caches and counters.

One `RouterState` per application, stored under `STATE`; handlers (proxy.py, views.py) and background tasks
(background.py) read and update it on the event loop only, so it needs no locks.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from aiohttp import web

from grace_hpc.config.routing import Routing
from grace_hpc.fleet.demand import DemandFile
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.router import coldstart, policy
from grace_hpc.router.access_log import AccessLog
from grace_hpc.router.auth import UpstreamKeys
from grace_hpc.router.health import HealthBook
from grace_hpc.router.metrics import Metrics
from grace_hpc.router.samples import LoadSamples
from grace_hpc.router.source import RegistrySource, Snapshot
from grace_hpc.router.tokens import TokenCounter
from grace_hpc.router.users import Users
from grace_hpc.router.wire import Timeouts, Wire

REQUEST_ID = "X-Request-Id"
REQUEST_ID_KEY = web.RequestKey("grace_request_id", str)  # where the middleware leaves each request's id


@dataclass
class RouterState:
    routing: Routing
    source: RegistrySource
    environ: Mapping[str, str]
    clock: Callable[[], float]
    client_keys: frozenset[str]
    poll_interval_s: float
    health: HealthBook
    cloud_health: HealthBook  # providers: ejected on 401/403 for a cooldown, then tried again by the next request
    stale_after_s: float = 90.0
    wall_clock: Callable[[], float] = time.time  # heartbeats are unix times; `clock` is monotonic
    access_log_path: Path | None = None
    metrics: Metrics = field(default_factory=Metrics)
    samples: LoadSamples = field(default_factory=lambda: LoadSamples(time.monotonic))  # the dashboard's 15 minutes
    users: Users = field(default_factory=Users)  # keys, limits, budgets, ledger (router/users.py)
    demand: coldstart.DemandBook = field(default_factory=coldstart.DemandBook)
    demand_file: DemandFile | None = None  # where the fleet controller reads demand (None: not published)
    upstream_keys: UpstreamKeys = field(default_factory=UpstreamKeys)
    tokens: TokenCounter = field(default_factory=TokenCounter)
    records: list[EndpointRecord] = field(default_factory=list)
    known: frozenset[str] = frozenset()  # names a request may use, recomputed per snapshot
    #: resolved routes by (model, category header), per snapshot; only names that resolved, so its size is bounded
    #: by the table and the live models, never by what clients send
    routes: dict[tuple[str | None, str | None], policy.Route] = field(default_factory=dict)
    version: object = None
    registry_error: str | None = None
    rotation: int = 0
    wire: Wire | None = None  # the upstream connections, opened by the app's lifespan (app.py)
    access: AccessLog | None = None
    # request ids made up for clients that send none: unique per router (random prefix) without a syscall each
    id_prefix: str = field(default_factory=lambda: secrets.token_hex(6))
    id_counter: Iterator[int] = field(default_factory=itertools.count)

    def new_request_id(self) -> str:
        return f"{self.id_prefix}-{next(self.id_counter):x}"

    def apply(self, snap: Snapshot) -> None:
        """Swap in a new snapshot (on the event loop); requests in flight keep the records they already chose."""
        self.records, self.version, self.registry_error = list(snap.records), snap.version, None
        self.known = frozenset(policy.known_models(self.routing, self.records))
        self.routes.clear()
        live = {r.id for r in self.records}
        self.health.forget_except(live)
        self.tokens.forget_except(live)

    def resolve(self, model: str | None, category_header: str | None) -> policy.Route:
        """policy.resolve over the current snapshot, cached (raises its UnknownTarget / MissingModel)."""
        key = (model, category_header)
        route = self.routes.get(key)
        if route is None:
            route = self.routes[key] = policy.resolve(self.routing, self.records, model, category_header, self.known)
        return route

    def stale_before(self) -> float:
        """Records whose last heartbeat is older than this are not routed to (see policy.stale)."""
        return self.wall_clock() - self.stale_after_s

    def routable(self, record: EndpointRecord, stale_before: float) -> bool:
        """Ready, not ejected, not stale: what /ready counts as routable (load and context aside)."""
        return (record.state is EndpointState.READY and not self.health.get(record.id).ejected
                and not policy.stale(record, stale_before))

    def cloud_ready(self) -> list[str]:
        """Providers whose key variable is set and that are not cooling down after refusing it."""
        return [p.name for p in self.routing.cloud
                if self.environ.get(p.api_key_env) and not self.cloud_health.cooling(p.name)]

    @cached_property
    def timeouts(self) -> Timeouts:
        # the read timeout bounds the silence between bytes, not the whole generation, so long streams are fine
        return Timeouts(self.routing.connect_timeout_s, self.routing.read_timeout_s)

    @cached_property
    def short_timeouts(self) -> Timeouts:
        """For the router's own small calls (probes, /tokenize): twice the connect timeout in all."""
        return Timeouts(self.routing.connect_timeout_s, self.routing.connect_timeout_s)


STATE = web.AppKey("grace_router_state", RouterState)
