"""Keys: the ones clients present to the router, and each endpoint's own key injected upstream.

Keys are never logged, never put in an error message and never returned to a client.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grace_hpc.errors import ConfigError, RegistryError
from grace_hpc.registry.keys import read_key_file

ROUTER_KEYS_ENV = "GRACE_ROUTER_KEYS"


def read_secret_file(path: Path) -> str:
    """The stripped contents of an owner-only file (group/other permission bits must be clear)."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror})") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: key file is readable by others; run `chmod 600 {path}`")
    return text.strip()


def client_keys(keys_file: Path | None, environ: Mapping[str, str]) -> frozenset[str]:
    """Keys from --keys-file (one a line, `#` comments) and $GRACE_ROUTER_KEYS (comma-separated)."""
    keys = {k.strip() for k in environ.get(ROUTER_KEYS_ENV, "").split(",") if k.strip()}
    if keys_file is not None:
        lines = read_secret_file(keys_file).splitlines()
        keys.update(s for s in (line.split("#", 1)[0].strip() for line in lines) if s)
    return frozenset(keys)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_keys_off_loopback(host: str, keys: frozenset[str]) -> None:
    if not keys and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without client keys: set ${ROUTER_KEYS_ENV} (comma-separated) or pass "
            "--keys-file FILE (owner-only, one key a line), or bind to 127.0.0.1"
        )


def authorized(keys: frozenset[str], authorization: str | None) -> bool:
    """True when no keys are configured or the `Authorization: Bearer KEY` header carries one of them."""
    if not keys:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    presented = token.strip().encode("utf-8", "surrogateescape")
    # compare against every key without stopping early: the time taken does not say which key nearly matched
    matches = [hmac.compare_digest(presented, k.encode("utf-8", "surrogateescape")) for k in keys]
    return any(matches)


@dataclass
class UpstreamKeys:
    """Endpoint keys from each record's `api_key_file`, cached; no file is touched on the event loop.

    A key not yet cached is read in a worker thread; `refresh()` (run in a worker thread by the registry watch,
    once a poll) re-reads the files whose mtime or size changed, so a rotated key is picked up within a second."""

    cache: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)

    async def get(self, key_file: str | None) -> str | None:
        if key_file is None:
            return None
        hit = self.cache.get(key_file)
        return hit[1] if hit is not None else await asyncio.to_thread(self.load, key_file)

    def load(self, key_file: str) -> str:
        """Read (blocking) and cache one key file."""
        try:
            st = os.stat(key_file)
        except OSError as exc:
            raise RegistryError(f"{key_file}: cannot read API key file ({exc.strerror})") from exc
        key = read_key_file(key_file)
        self.cache[key_file] = ((st.st_mtime_ns, st.st_size), key)
        return key

    def refresh(self) -> None:
        """Re-read (blocking) every cached file that changed; drop those that went away."""
        for key_file, (stamp, _) in list(self.cache.items()):
            try:
                st = os.stat(key_file)
                if (st.st_mtime_ns, st.st_size) != stamp:
                    self.load(key_file)
            except (OSError, RegistryError):
                self.cache.pop(key_file, None)  # the next request reads it again and reports why it cannot
