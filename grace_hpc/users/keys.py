"""Per-user router keys, stored only as salted digests in one owner-only JSON file (docs/usage.md).

A key reads `gk_<id>_<secret>`: the 8-hex id finds its record and HMAC-SHA256(store salt, key) is compared in
constant time. The key itself is printed once by `grace-hpc keys create` and never written anywhere; the ledger,
logs, `usage` and errors name a key by its id only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal

import filelock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from grace_hpc.errors import ConfigError
from grace_hpc.registry.fs import MISSING, FileStamp, LocalFileSystem, stamp_of

KEYS_FILE_ENV = "GRACE_KEY_STORE"
_KEY = re.compile(r"^gk_(?P<id>[0-9a-f]{8})_[A-Za-z0-9_-]{43}$")
_USER = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class KeyRecord(BaseModel):
    """One key's policy. `digest` is HMAC-SHA256(store salt, key): the key cannot be recovered from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(pattern=r"^[0-9a-f]{8}$")
    user: str = Field(pattern=_USER)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: float
    budget_usd_month: float | None = Field(default=None, ge=0)  # cloud spend per calendar month (UTC)
    rpm: int | None = Field(default=None, gt=0)  # requests per minute (token bucket, bursts up to rpm)
    categories: tuple[str, ...] | None = None  # allowed categories; None: all
    expires: date | None = None  # last day the key works (UTC)
    revoked_at: float | None = None
    admin: bool = False  # may see /status, the dashboard and /metrics, and write the catalog (router/admin.py)

    def active(self, today: date) -> bool:
        return self.revoked_at is None and (self.expires is None or today <= self.expires)


class KeyDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    salt: str = Field(pattern=r"^[0-9a-f]{64}$")
    keys: tuple[KeyRecord, ...] = ()


def key_digest(salt: str, key: str) -> str:
    return hmac.new(bytes.fromhex(salt), key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class KeyTable:
    """The keys as the router holds them: look a presented key up by its id, check its digest in constant time.

    A key that matched is remembered (`verified`), so each later request with it skips the HMAC and the pattern
    (~5 us a request). The memo holds only keys that matched a record, one per key id at most, so clients cannot
    grow it; it belongs to this table, and the router builds a new table whenever the key store changes, so a
    revoked or rotated key is forgotten with the table that held it. Expiry is checked on every call."""

    salt: str
    by_id: Mapping[str, KeyRecord]
    verified: dict[str, KeyRecord] = field(default_factory=dict, compare=False, repr=False)

    def identify(self, token: str, today: date) -> KeyRecord | None:
        """The active record `token` is the key of, else None (unknown, wrong secret, revoked or expired)."""
        record = self.verified.get(token)
        if record is None:
            m = _KEY.match(token)
            if m is None:
                return None
            record = self.by_id.get(m["id"])
            expected = record.digest if record else "0" * 64  # same work whether or not the id exists
            if not hmac.compare_digest(key_digest(self.salt, token), expected) or record is None:
                return None
            self.verified[token] = record
        return record if record.active(today) else None

    @cached_property
    def budgets(self) -> dict[str, float | None]:
        """Each user's monthly cloud budget: the smallest on their keys not revoked (None: no key sets one), so a
        second key without a budget cannot lift the first one's."""
        out: dict[str, float | None] = {}
        for r in self.by_id.values():
            if r.revoked_at is None:
                amounts = [b for b in (out.get(r.user), r.budget_usd_month) if b is not None]
                out[r.user] = min(amounts) if amounts else None
        return out


class KeyStore:
    """The key file: read whole, changed under a lock by an atomic replace, mode 0600 in a 0700 folder."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        self.fs = LocalFileSystem()
        self._lock = filelock.FileLock(str(path.with_name(path.name + ".lock")), timeout=10)

    def stamp(self) -> FileStamp:
        try:
            return stamp_of(self.fs.stat(self.path))
        except FileNotFoundError:
            return MISSING

    def table(self) -> KeyTable:
        doc = self._read()
        if doc is None:
            return KeyTable("0" * 64, {})
        return KeyTable(doc.salt, {r.key_id: r for r in doc.keys})

    def records(self) -> list[KeyRecord]:
        doc = self._read()
        return list(doc.keys) if doc else []

    def create(self, user: str, *, budget_usd_month: float | None = None, rpm: int | None = None,
               categories: tuple[str, ...] | None = None, expires: date | None = None,
               admin: bool = False) -> tuple[str, KeyRecord]:
        """A new key for `user`: returns (the key, to show once, and its record)."""
        with self._changing() as (doc, keys):
            key, record = self._new_key(doc, keys, user=user, budget_usd_month=budget_usd_month, rpm=rpm,
                                        categories=categories, expires=expires, admin=admin)
            keys.append(record)
        return key, record

    def revoke(self, key_id: str | None = None, user: str | None = None) -> list[KeyRecord]:
        """Revoke one key by id, or every active key of `user`; returns the keys revoked."""
        with self._changing() as (_, keys):
            hits = [i for i, r in enumerate(keys) if r.revoked_at is None and (r.key_id == key_id or r.user == user)]
            if not hits:
                raise ConfigError(f"no active key {'id ' + key_id if key_id else 'of user ' + str(user)!r} in "
                                  f"{self.path}; see `grace-hpc keys list`")
            for i in hits:
                keys[i] = keys[i].model_copy(update={"revoked_at": self.clock()})
            return [keys[i] for i in hits]

    def rotate(self, key_id: str) -> tuple[str, KeyRecord]:
        """A new key with the same user and policy; the old one is revoked in the same write."""
        with self._changing() as (doc, keys):
            hits = [i for i, r in enumerate(keys) if r.key_id == key_id and r.revoked_at is None]
            if not hits:
                raise ConfigError(f"no active key id {key_id!r} in {self.path}; see `grace-hpc keys list`")
            old = keys[hits[0]]
            keys[hits[0]] = old.model_copy(update={"revoked_at": self.clock()})
            policy = old.model_dump(include={"user", "budget_usd_month", "rpm", "categories", "expires", "admin"})
            key, record = self._new_key(doc, keys, **policy)
            keys.append(record)
        return key, record

    def _new_key(self, doc: KeyDocument, keys: list[KeyRecord], **policy: object) -> tuple[str, KeyRecord]:
        taken = {r.key_id for r in keys}
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
        key = f"gk_{key_id}_{secrets.token_urlsafe(32)}"
        try:
            record = KeyRecord(key_id=key_id, digest=key_digest(doc.salt, key), created_at=self.clock(), **policy)
        except ValidationError as exc:
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid key settings: {problem}") from None
        return key, record

    @contextmanager
    def _changing(self) -> Iterator[tuple[KeyDocument, list[KeyRecord]]]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock:
            doc = self._read() or KeyDocument(salt=secrets.token_hex(32))
            keys = list(doc.keys)
            yield doc, keys
            data = KeyDocument(salt=doc.salt, keys=tuple(keys)).model_dump_json(indent=1).encode()
            tmp = self.fs.write_temp(self.path.parent, f".{self.path.name}", data)
            self.fs.replace(tmp, self.path)
            self.fs.fsync_dir(self.path.parent)

    def _read(self) -> KeyDocument | None:
        try:
            data, st = self.fs.read(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the key store ({exc.strerror})") from exc
        if st.st_mode & 0o077:
            raise ConfigError(f"{self.path}: key store is readable or writable by others; run `chmod 600 {self.path}`"
                              " and rotate its keys")
        try:
            return KeyDocument.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"{self.path}: not a grace-hpc key store ({type(exc).__name__}); restore it or move "
                              "it aside and create new keys") from None
