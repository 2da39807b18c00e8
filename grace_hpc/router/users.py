"""Who is asking, what they may do, and what it cost: the router's side of keys, limits, budgets and the ledger.

The app calls five hooks (docs/usage.md): `open` (the Authorization header -> a `Tab`, or None for 401),
`admit` (category allow-list -> 403, rate limit -> 429), `may_use_cloud` / `reserve` (the budget, before a cloud
attempt), and `finish` (one ledger record, counters, the reservation settled). Nothing here blocks the event
loop: the key store and the ledger's totals are read in worker threads, ledger writes go to `LedgerWriter`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from grace_hpc.config.routing import CloudProvider
from grace_hpc.errors import GraceError
from grace_hpc.ledger.records import LedgerRecord, Served
from grace_hpc.ledger.sql import Ledger, open_ledger
from grace_hpc.ledger.writer import LedgerWriter
from grace_hpc.registry.records import EndpointRecord
from grace_hpc.router.auth import authorized
from grace_hpc.router.errors import error_response
from grace_hpc.router.user_metrics import UsageSection, UserMetrics, usage_section
from grace_hpc.users.budget import BudgetBook, Reservation, cost_usd, day_of, estimate_usd, month_of
from grace_hpc.users.keys import KeyRecord, KeyStore, KeyTable
from grace_hpc.users.limits import RateLimits

log = logging.getLogger("grace_hpc.router.users")

SHARED_USER = "shared"  # a key from $GRACE_ROUTER_KEYS / --keys-file
ANONYMOUS_USER = "anonymous"  # a loopback router without any key
#: how often the ledger's monthly totals are re-read, for routers sharing one PostgreSQL ledger
SPEND_SYNC_S = 30.0


@dataclass(slots=True)
class Tab:
    """One request's account: who, what for, and the cloud money held for it."""

    user: str
    key: KeyRecord | None
    arrived: float  # unix time
    started: float  # perf_counter
    category: str = ""
    requested_model: str | None = None
    body: Mapping[str, object] = field(default_factory=dict)
    prompt_tokens: int = 0
    reservation: Reservation | None = None
    provider: CloudProvider | None = None  # the cloud provider the reservation is for
    over_budget: bool = False  # the cloud was skipped (or refused) for this user's budget
    budget: float | None = None  # the user's monthly cloud budget (KeyTable.budgets)

    @property
    def admin(self) -> bool:
        """May see the fleet and change it (admin.py): an admin key, a shared key, or a keyless loopback router."""
        return self.key is None or self.key.admin


@dataclass
class Users:
    legacy_keys: frozenset[str] = frozenset()
    store: KeyStore | None = None
    ledger: Ledger | None = None  # for reading totals; the writer has its own connection
    writer: LedgerWriter | None = None
    metrics_need_key: bool = False
    poll_interval_s: float = 1.0
    wall_clock: Callable[[], float] = time.time
    clock: Callable[[], float] = time.monotonic
    table: KeyTable = field(default_factory=lambda: KeyTable("0" * 64, {}))
    stamp: object = None
    limits: RateLimits = field(default_factory=RateLimits)
    book: BudgetBook = field(default_factory=BudgetBook)
    metrics: UserMetrics = field(default_factory=UserMetrics)
    store_error: str | None = None

    @property
    def keyed(self) -> bool:
        """Whether this router asks for keys at all (a keyless router is open to everyone on its host)."""
        return bool(self.legacy_keys or self.table.by_id)

    # -- hooks on the request path -------------------------------------------------------------------------------

    def open(self, authorization: str | None) -> Tab | None:
        """The caller's tab, or None when the key is missing, unknown, revoked or expired (401)."""
        now = self.wall_clock()
        if not self.keyed:
            return Tab(ANONYMOUS_USER, None, now, time.perf_counter())
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        record = self.table.identify(token, datetime.fromtimestamp(now, UTC).date())
        if record is not None:
            return Tab(record.user, record, now, time.perf_counter(), budget=self.table.budgets.get(record.user))
        if self.legacy_keys and authorized(self.legacy_keys, authorization):
            return Tab(SHARED_USER, None, now, time.perf_counter())
        return None

    def admit(self, tab: Tab, category: str, requested_model: str | None, body: Mapping[str, object],
              prompt_tokens: int) -> web.Response | None:
        """403 for a category the key may not use, 429 past its rate; None to go on."""
        tab.category, tab.requested_model, tab.body, tab.prompt_tokens = category, requested_model, body, prompt_tokens
        key = tab.key
        if key is None:
            return None
        if key.categories is not None and category not in key.categories:
            return self._refuse(tab, 403, "category", "category_not_allowed", "permission_error",
                                f"key {key.key_id} (user {key.user}) may not use category {category!r}; allowed: "
                                f"{', '.join(key.categories)}. Ask an admin for `grace-hpc keys create --categories`")
        if key.rpm is not None:
            wait = self.limits.take(key.key_id, key.rpm, self.clock())
            if wait > 0:
                refused = self._refuse(tab, 429, "rate_limit", "rate_limit_exceeded", "rate_limit_error",
                                       f"key {key.key_id} (user {key.user}) is over its {key.rpm} requests per "
                                       f"minute; retry in {wait:.1f} s")
                refused.headers["Retry-After"] = str(max(1, round(wait)))
                return refused
        return None

    def may_use_cloud(self, tab: Tab, providers: tuple[str, ...]) -> bool:
        """False once the user's budget is spent: the request is planned without the cloud `providers`."""
        if self.book.exhausted(tab.user, tab.budget, self.wall_clock()):
            tab.over_budget = bool(providers)
            return False
        return True

    def reserve(self, tab: Tab, provider: CloudProvider) -> bool:
        """Hold this request's estimated cost before it goes to `provider`; False: over budget, skip the cloud."""
        estimate = estimate_usd(provider, tab.body, tab.prompt_tokens)
        tab.reservation = self.book.reserve(tab.user, tab.budget, estimate, self.wall_clock())
        tab.over_budget = tab.reservation is None
        if tab.reservation is None:
            return False
        tab.provider = provider
        # a handler cancelled mid-call (the client went away) never reaches `finish`: charge it its estimate then,
        # since the provider may bill the work anyway, and never leave the money held
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self._abandoned(tab))
        return True

    def _abandoned(self, tab: Tab) -> None:
        if tab.reservation is not None:
            self.finish(tab, 499, provider=tab.provider)

    def release(self, tab: Tab) -> None:
        """The cloud attempt failed before answering: nothing was spent."""
        if tab.reservation is not None:
            self.book.release(tab.reservation)
            tab.reservation = None

    def budget_exceeded(self, tab: Tab) -> web.Response:
        budget = tab.budget or 0.0
        spent = self.book.committed(tab.user, self.wall_clock())
        return self._refuse(tab, 429, "budget", "budget_exceeded", "insufficient_quota",
                            f"user {tab.user}'s cloud budget for {month_of(self.wall_clock())} is spent (${spent:.4f} "
                            f"of ${budget:.2f}, in-flight requests included) and no local endpoint could take "
                            f"category {tab.category!r}; retry when the fleet has room, or ask for a larger budget")

    def finish(self, tab: Tab, status: int, *, endpoint: EndpointRecord | None = None,
               provider: CloudProvider | None = None, model: str | None = None, usage: object = None) -> None:
        """The request is answered: settle the reservation, count it, queue its ledger record."""
        prompt, completion = _tokens(usage)
        cost = 0.0
        if provider is not None and tab.reservation is not None:
            # an answer without usage (a provider that ignores stream_options) is charged its reserved estimate
            cost = cost_usd(provider, prompt, completion) if usage is not None else tab.reservation.amount
            self.book.settle(tab.reservation, cost, tab.arrived)
            tab.reservation = None
            if over := self.book.overspend(tab.user, tab.budget, tab.arrived):
                log.warning("user %s is $%.4f over the cloud budget of $%.2f (requests in flight at the edge cost more "
                            "than their estimates)", tab.user, over, tab.budget)
        served = Served.LOCAL if endpoint is not None else Served.CLOUD if provider is not None else Served.NONE
        served_by = endpoint.id if endpoint is not None else provider.name if provider is not None else None
        self.metrics.request(tab.user, tab.category, served, prompt, completion, cost)
        if self.writer is not None:
            self.writer.add(LedgerRecord(
                ts=tab.arrived, username=tab.user, key_id=tab.key.key_id if tab.key else None, category=tab.category,
                requested_model=tab.requested_model, served=served, served_by=served_by,
                model=endpoint.model if endpoint is not None else model,
                partition=endpoint.partition if endpoint is not None else None, prompt_tokens=prompt,
                completion_tokens=completion, latency_s=round(time.perf_counter() - tab.started, 6), status=status,
                cost_usd=cost))

    def _refuse(self, tab: Tab, status: int, reason: str, code: str, error_type: str, message: str) -> web.Response:
        self.metrics.refusal(tab.user, reason)
        self.finish(tab, status)
        return error_response(status, message, code, error_type=error_type)

    # -- the dashboard, /metrics -------------------------------------------------------------------------------------

    def usage_section(self) -> UsageSection | None:
        if self.writer is None:
            return None
        now = self.wall_clock()
        return usage_section(month_of(now), day_of(now), self.book.spent, self.book.reserved, self.table.budgets,
                             written=self.writer.written, pending=len(self.writer.pending),
                             error=self.writer.last_error)

    # -- background: key store refresh, ledger totals -----------------------------------------------------------------

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        await self._reload_keys()
        await self._sync_spend()
        tasks = [asyncio.create_task(self._watch_keys()), asyncio.create_task(self._watch_spend())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)  # the last batch is committed before the router exits
        if self.ledger is not None:
            self.ledger.close()

    async def _watch_keys(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self._reload_keys()

    async def _reload_keys(self) -> None:
        if self.store is None:
            return
        try:
            stamp = self.store.stamp()
            if stamp != self.stamp:
                self.table = await asyncio.to_thread(self.store.table)
                self.stamp, self.store_error = stamp, None
                self.limits.forget_except(set(self.table.by_id))
        except GraceError as exc:  # keep the last good keys: a torn read must not lock everyone out
            self.store_error = str(exc)
            log.warning("key store: %s", exc)

    async def _watch_spend(self) -> None:
        while True:
            await asyncio.sleep(SPEND_SYNC_S)
            await self._sync_spend()

    async def _sync_spend(self) -> None:
        """This month's and today's cloud spend per user from the ledger (several routers may share it)."""
        if self.ledger is None:
            return
        now = self.wall_clock()
        start = datetime.fromtimestamp(now, UTC)
        month_start = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
        day_start = start.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        try:
            month = await asyncio.to_thread(self.ledger.cloud_spend, month_start)
            day = await asyncio.to_thread(self.ledger.cloud_spend, day_start)
        except GraceError as exc:
            log.warning("ledger totals: %s", exc)
            return
        self.book.merge({**{(u, month_of(now)): v for u, v in month.items()},
                         **{(u, day_of(now)): v for u, v in day.items()}})


def _tokens(usage: object) -> tuple[int, int]:
    if not isinstance(usage, dict):  # parsed JSON (upstream.py `_usage`): a dict or anything else
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) and prompt >= 0 else 0,
            completion if isinstance(completion, int) and completion >= 0 else 0)


def open_users(legacy_keys: frozenset[str], store: KeyStore, ledger: str | None, *,
               metrics_need_key: bool = False, poll_interval_s: float = 1.0) -> Users:
    """The router's users over a key store and (unless `ledger` is None) a ledger with its writer thread."""
    users = Users(legacy_keys, store, metrics_need_key=metrics_need_key, poll_interval_s=poll_interval_s)
    users.table, users.stamp = store.table(), store.stamp()  # read once now: `route` refuses off loopback without keys
    if ledger is not None:
        users.ledger = open_ledger(ledger)
        users.writer = LedgerWriter(open_ledger(ledger))
    return users
