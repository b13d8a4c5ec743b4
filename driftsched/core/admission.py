"""Admission beyond validation: tenant quotas, then SLO-aware early rejection and tier holdback.

**Quotas.** A bucket holds one minute of quota and refills continuously. A request is admitted when its bucket
holds at least min(cost, capacity), so a single request larger than a minute's quota is still served
when the bucket is full (the bucket then goes into debt). Token charges use the corrected estimate and
are reconciled with the observed length when the request finishes.

**SLO admission** (`SloAdmission`, on when `AdmissionConfig.enabled` and the pool's rate has been
measured; the model is `driftsched.core.risk`). With ``mu`` the pool's measured output tokens/s, ``A``
the corrected output estimates queued ahead of a new request (tiers as important or more, TTFT deadline
no later, not yet late), ``b`` the time left to its TTFT deadline and ``m`` = `shed_margin` >= 1, in
this order:

1. **unreachable** when ``A / mu > m · b``: if its tenant is above its fair share, 429
   ``slo_unreachable``. If not, the same test on the work ahead that the tenants are *entitled* to:
   its own tenant's in full, every other tenant's only up to what that tenant's fair share ``f_j``
   serves in the time (``min(A_j, f_j · m · b)``). Beyond it the pool itself is short, 503
   ``system_slo_unreachable``; within it the request is admitted. The rest of ``A`` is other tenants'
   work beyond their shares (their burst), so a tenant within its share is never shed for it, even
   while the burst is too young to move that tenant's demand over the window above its share.
2. **tier holdback** when its own tier is at risk (`RiskModel.at_risk`, past `risk_share`) or a
   more important tier is projected to miss its TTFT objective (past `holdback_share`), and what was
   recently admitted of its tenant already exceeds the tenant's fair share: 429 ``tier_holdback``.
   When the system is at risk, tenants above their share give way first, and only down to their
   share: the shares sum to the pool's rate, so about the physical excess is shed. A less important
   request waits behind the at-risk tier anyway (its deadline is later), so it is refused only once
   that tier is projected to miss: refused earlier, it is shed for bursts that queueing absorbs.

Retry-After is the time the work ahead needs to drain to where the request would make its objective
(``A / mu - b``; for a holdback, the at-risk tier's projected excess), within 1 s..`max_retry_after_s`.
Conservative by construction: nothing is refused before the rate is measured or with nothing queued
ahead; ``A`` counts only work that a tier-then-deadline order (and FIFO) serves first, so the predicted
wait is a lower bound there, and ``m`` covers the rate's error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from driftsched.core.config import AdmissionConfig, TenantConfig
from driftsched.core.request import RejectReason, Ticket
from driftsched.core.risk import RiskModel, Share


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


@dataclass(slots=True, frozen=True)
class Refusal:
    """Why SLO admission refuses a request, and when to retry."""

    reason: RejectReason
    detail: str
    retry_after_s: float


class SloAdmission:
    """Early rejection and tier holdback at admission (module docstring, "SLO admission")."""

    def __init__(self, config: AdmissionConfig, risk: RiskModel) -> None:
        self.config = config
        self.risk = risk

    def check(self, ticket: Ticket, now: float) -> Refusal | None:
        """Record the ticket's demand; a `Refusal` if it is refused, else None (admit it, then call
        `admitted`)."""
        risk, cfg = self.risk, self.config
        risk.demand.offered(ticket.tenant, now, ticket.remaining_estimate)
        if not cfg.enabled:
            return None
        rate, shares = risk.pool_rate(), risk.shares(now)
        if rate is None or shares is None:
            return None
        share = shares[ticket.tenant]
        if math.isfinite(ticket.ttft_slo_s):
            refusal = self._unreachable(ticket, now, rate, shares)
            if refusal is not None:
                return refusal
        if cfg.holdback and share.admitted_over(cfg.share_tolerance):
            for tier in risk.queued.tiers():
                if tier > ticket.tier:
                    break
                limit = cfg.risk_share if tier == ticket.tier else cfg.holdback_share
                urgent = risk.at_risk(tier, now, limit)
                if urgent is not None:
                    excess = (risk.projected_share(urgent, now) - limit) * urgent.ttft_slo_s
                    return Refusal(
                        RejectReason.TIER_HOLDBACK,
                        f"tier {tier} is at risk of missing its time-to-first-token objective and tenant "
                        f"{ticket.tenant!r} is above its fair share ({share.admitted:.0f} of "
                        f"{share.fair:.0f} output tokens/s admitted); retry later or send less",
                        self._retry(excess),
                    )
        return None

    def admitted(self, ticket: Ticket, now: float) -> None:
        """The ticket passed every check and is queued."""
        self.risk.demand.admitted(ticket.tenant, now, ticket.remaining_estimate)

    def _unreachable(self, ticket: Ticket, now: float, rate: float,
                     shares: dict[str, Share]) -> Refusal | None:
        risk, cfg = self.risk, self.config
        budget = max(0.0, ticket.ttft_deadline - now)
        ahead = risk.queued.ahead(ticket.tier, ticket.ttft_deadline, now)
        wait = ahead / rate
        if ahead <= 0 or wait <= cfg.shed_margin * budget:
            return None
        tenant, objective, share = ticket.tenant, ticket.ttft_slo_s, shares[ticket.tenant]
        if share.over(cfg.share_tolerance):
            return Refusal(
                RejectReason.SLO_UNREACHABLE,
                f"tenant {tenant!r} is above its fair share ({share.offered:.0f} of {share.fair:.0f} output "
                f"tokens/s) and this request would wait about {wait:.1f} s for its first token against an "
                f"objective of {objective:g} s; retry later or send less",
                self._retry(wait - budget),
            )
        # Within its share: count the others' work ahead only up to what their own shares would serve
        # in the time it has; beyond that it is their burst, and no request is shed for another's burst.
        horizon = cfg.shed_margin * budget
        front, by_tenant = risk.queued.ahead_by_tenant(ticket.tier, ticket.ttft_deadline, now)
        entitled = front + sum(
            work if other == tenant else min(work, shares[other].fair * horizon if other in shares else 0.0)
            for other, work in by_tenant.items()
        )
        wait_entitled = entitled / rate
        if wait_entitled <= horizon:
            return None
        return Refusal(
            RejectReason.SYSTEM_SLO_UNREACHABLE,
            f"the pool is short: this request would wait about {wait_entitled:.1f} s for its first token "
            f"against an objective of {objective:g} s; retry later",
            self._retry(wait_entitled - budget),
        )

    def _retry(self, seconds: float) -> float:
        return min(max(1.0, seconds), self.config.max_retry_after_s)


def admission_for(policy: Any, configured: AdmissionConfig) -> AdmissionConfig:
    """The admission a scheduler runs `policy` with: `configured`, with the fields the policy's class
    declares in an ``admission`` mapping in their place (a policy that models another scheduler with
    no such admission declares ``{"enabled": False}``, so it runs as that scheduler does)."""
    declared = getattr(type(policy), "admission", None)
    if not declared:
        return configured
    return AdmissionConfig.model_validate({**configured.model_dump(), **dict(declared)})
