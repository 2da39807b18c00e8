"""Requests per minute per key: a token bucket (pure; the caller passes the time)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rpm` requests a minute on average, bursts of up to `rpm` requests; starts full."""

    rpm: int
    tokens: float = field(init=False)
    at: float | None = None

    def __post_init__(self) -> None:
        self.tokens = float(self.rpm)

    def take(self, now: float) -> float:
        """0 when a request may go now (and spend its token), else the seconds until one may."""
        if self.at is not None:
            self.tokens = min(float(self.rpm), self.tokens + (now - self.at) * self.rpm / 60.0)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * 60.0 / self.rpm


@dataclass
class RateLimits:
    """One bucket per key id, rebuilt when the key's `rpm` changes (a rotated or edited key)."""

    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, key_id: str, rpm: int, now: float) -> float:
        bucket = self.buckets.get(key_id)
        if bucket is None or bucket.rpm != rpm:
            bucket = self.buckets[key_id] = TokenBucket(rpm)
        return bucket.take(now)

    def forget_except(self, key_ids: set[str]) -> None:
        for gone in self.buckets.keys() - key_ids:
            del self.buckets[gone]
