"""Tenant quotas: token buckets for requests/min and tokens/min, checked before anything is charged.

A bucket holds one minute of quota and refills continuously. A request is admitted when its bucket
holds at least min(cost, capacity), so a single request larger than a minute's quota is still served
when the bucket is full (the bucket then goes into debt). Token charges use the corrected estimate and
are reconciled with the observed length when the request finishes.
"""

from __future__ import annotations

from driftsched.core.config import TenantConfig


class TokenBucket:
    """A continuously refilling bucket of `capacity` units, `rate` units per second."""

    __slots__ = ("capacity", "level", "rate", "t")

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self.t = now

    def _refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` could be taken (0 if it can be taken now)."""
        self._refill(now)
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def left(self, now: float) -> float:
        """Units that could be taken now (negative while a request larger than the bucket is repaid)."""
        self._refill(now)
        return self.level

    def give_back(self, amount: float) -> None:
        """Refund (or, if negative, charge more) after the fact."""
        self.level = min(self.capacity, self.level + amount)


class TenantQuota:
    """A tenant's request and token buckets (either may be absent: unlimited)."""

    __slots__ = ("requests", "tokens")

    def __init__(self, config: TenantConfig, now: float) -> None:
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        self.requests = TokenBucket(rpm, now) if rpm is not None else None
        self.tokens = TokenBucket(tpm, now) if tpm is not None else None

    def request_wait_s(self, now: float) -> float:
        return self.requests.wait_s(1.0, now) if self.requests is not None else 0.0

    def token_wait_s(self, cost: float, now: float) -> float:
        return self.tokens.wait_s(cost, now) if self.tokens is not None else 0.0

    def left(self, now: float) -> tuple[float | None, float | None]:
        """(requests, tokens) that could be taken now; None for an unlimited one."""
        return (self.requests.left(now) if self.requests is not None else None,
                self.tokens.left(now) if self.tokens is not None else None)

    def charge(self, cost: float) -> None:
        if self.requests is not None:
            self.requests.take(1.0)
        if self.tokens is not None:
            self.tokens.take(cost)

    def reconcile(self, estimated: float, observed: float) -> None:
        """Settle the token charge once the real output length is known."""
        if self.tokens is not None:
            self.tokens.give_back(estimated - observed)
