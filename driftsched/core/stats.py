"""The scheduler's stats snapshot: what the metrics exporter and the simulator's results both report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from driftsched.core.accuracy import DriftStat
from driftsched.core.risk import TierRisk


@dataclass(slots=True)
class TenantCounters:
    """Lifetime counters of one tenant."""

    admitted: int = 0
    dispatched: int = 0
    completed: int = 0
    cancelled: int = 0
    expired: int = 0
    preempted: int = 0
    """Times a running request of this tenant was preempted and put back in the queue to resume."""
    revoked: int = 0
    """Times a grant ahead of this tenant was taken back before it started, for a better-ranked request
    (the request went back to its place in the queue; each grant still counts as dispatched)."""
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class TenantState:
    """One tenant's part of the scheduler right now: what it may see of its own use."""

    counters: TenantCounters
    queued: int
    in_flight: int
    requests_left: float | None
    """Requests the rate quota would admit now (None: unlimited)."""
    tokens_left: float | None
    """Tokens (prompt + estimated output) the token quota would admit now (None: unlimited)."""


@dataclass(slots=True, frozen=True)
class SchedulerStats:
    """A point-in-time view of the scheduler."""

    time: float
    policy: str
    queued: dict[str, int]
    in_flight: dict[str, int]
    counters: dict[str, TenantCounters]
    drift: list[DriftStat]
    drift_total: DriftStat
    service_tokens_per_s: float | None = None
    """The pool's measured output tokens/s while saturated (None: not measured yet)."""
    tiers: list[TierRisk] = field(default_factory=list)
    """Each tier with queued work: objective, work ahead, predicted wait, at risk (`TierRisk`)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return dataclasses.asdict(self)
