"""Routing in the worker itself: each request goes straight to an endpoint chosen from the registry, no router hop.

A SLURM array task runs on a compute node, where `127.0.0.1:8000` is the node's own loopback and no router listens.
The registry, though, is on the shared file system. So by default a worker routes in-process with the router's own
pure policy (grace_hpc/router/policy.py: `resolve` a model or category, `plan` the ready, fresh, least-loaded
endpoints), reads each endpoint's key from its owner-only key file, and fails over to the next endpoint on a
transient error, as the router does. Cloud providers are not used from here (they need the router's keys).
Replies carry the router's provenance headers (X-Grace-Served-By / -Engine / -Quantization) so result rows say
who answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from grace_hpc.config.cluster import LockMode
from grace_hpc.config.routing import Routing
from grace_hpc.errors import UpstreamError
from grace_hpc.registry.keys import read_key_file
from grace_hpc.registry.records import EndpointRecord, EndpointState
from grace_hpc.registry.store import Registry
from grace_hpc.router import policy
from grace_hpc.work.client import Reply, Upstream

__all__ = ["FleetSpec", "Fleet"]

REFRESH_S = 2.0  # re-read the registry at most this often (one stat tells whether it changed)


class FleetSpec(BaseModel):
    """Where a worker finds the fleet without a router (picklable; no keys: they stay in their key files)."""

    model_config = ConfigDict(frozen=True)

    registry: Path
    lock_mode: LockMode = LockMode.FLOCK
    routing: Routing
    stale_after_s: float = 90.0


@dataclass
class Fleet(Upstream):
    """An Upstream whose every POST is routed over the registry's ready endpoints."""

    fleet: FleetSpec | None = None
    _registry: Registry | None = field(default=None, init=False, repr=False)
    _version: object = field(default=None, init=False, repr=False)
    _records: list[EndpointRecord] = field(default_factory=list, init=False, repr=False)
    _read_at: float = field(default=-1e9, init=False, repr=False)
    _in_flight: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _keys: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _turn: int = field(default=0, init=False, repr=False)

    @classmethod
    def from_spec(cls, spec: FleetSpec, concurrency: int, retries: int, timeout_s: float) -> Fleet:
        return cls(f"registry:{spec.registry}", None, concurrency, retries, timeout_s, fleet=spec)

    @property
    def spec(self) -> FleetSpec:
        assert self.fleet is not None, "Fleet needs a FleetSpec"
        return self.fleet

    def records(self) -> list[EndpointRecord]:
        """The registry's endpoints, re-read when the file changed (checked at most every REFRESH_S)."""
        if self._registry is None:
            self._registry = Registry(self.spec.registry, lock_mode=self.spec.lock_mode)
        now = time.monotonic()
        if now - self._read_at >= REFRESH_S:
            self._read_at = now
            if self._version is None or self._registry.changed_since(self._version):
                snap = self._registry.snapshot()
                self._version, self._records = snap.version, snap.records
        return self._records

    def endpoints(self, model: str) -> list[EndpointRecord]:
        """The ready, fresh endpoints that a request for `model` (a model, alias or category) may go to, best first."""
        records = self.records()
        try:
            route = policy.resolve(self.spec.routing, records, model, None)
        except policy.UnknownTarget as exc:
            raise UpstreamError(f"{exc.message()} (registry {self.spec.registry})") from None
        loads = {rid: policy.Load(in_flight=n) for rid, n in self._in_flight.items()}
        self._turn += 1
        attempts = policy.plan(route, self.spec.routing, records, loads, rotation=self._turn,
                               stale_before=time.time() - self.spec.stale_after_s)
        return [a.record for a in attempts if isinstance(a, policy.EndpointAttempt)]

    def key(self, record: EndpointRecord) -> str | None:
        if record.id not in self._keys:
            self._keys[record.id] = read_key_file(record.api_key_file) if record.api_key_file else None
        return self._keys[record.id]

    async def get(self, path: str, *, root: bool = False) -> Reply:
        if path == "/models" and not root:  # what the fleet serves, as the router's /v1/models would say
            ready = [r for r in self.records() if r.state is EndpointState.READY]
            data = [{"id": r.served_model_name, "object": "model", "owned_by": r.engine} for r in ready]
            return Reply({"object": "list", "data": data}, {}, 1)
        raise UpstreamError(f"GET {path}: not available when routing in-process from {self.spec.registry}")

    async def post(self, path: str, payload: dict[str, Any]) -> Reply:
        model = str(payload.get("model"))
        last = "no attempt"
        assert self._slots is not None, "use Fleet as an async context manager"
        for attempt in range(1, self.retries + 2):
            # choose once a slot is free: the endpoints' loads then count only requests really in flight
            async with self._slots:
                targets = self.endpoints(model)
                if not targets:
                    last = f"no ready endpoint in the registry serves {model!r} (or all are at max_queue_depth)"
                for record in targets:
                    reply = await self._send_to(record, path, payload, attempt)
                    if isinstance(reply, Reply):
                        return reply
                    last = f"{record.id}: {reply}"
            await self.backoff(attempt)
        raise UpstreamError(
            f"POST {path} (model {model!r}) failed {self.retries + 1} times routing over {self.spec.registry}; "
            f"last: {last}; check `grace-hpc status`, or launch a server for it (`grace-hpc launch`)")

    async def _send_to(self, record: EndpointRecord, path: str, payload: dict[str, Any], attempt: int
                       ) -> Reply | str:
        key = self.key(record)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        body = {**payload, "model": record.served_model_name}
        self._in_flight[record.id] = self._in_flight.get(record.id, 0) + 1
        try:
            reply = await self.send_in_slot("POST", record.base_url.rstrip("/") + path, body, attempt=attempt,
                                            headers=headers)
        finally:
            self._in_flight[record.id] -= 1
        if isinstance(reply, Reply):
            provenance = {"x-grace-served-by": record.id, "x-grace-engine": record.engine,
                          "x-grace-quantization": record.plan.quantization or "none"}
            return Reply(reply.body, {**reply.headers, **provenance}, reply.attempts)
        return reply
