"""One tenant's own usage (GET /v1/usage), built in the scheduler actor in one call.

Everything here is the asking tenant's alone: its lifetime request counters, how its granted requests
ended, its prompt and generated tokens, its requests queued and running now, its latency percentiles
and its quota left. Nothing names or counts another tenant. Percentiles are estimated from the request
book's fixed latency buckets (`Histogram.quantile`), so they are as coarse as those buckets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from deployments.telemetry import LATENCY_KINDS, Outcome, RequestBook
from driftsched.core.scheduler import Scheduler

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass(slots=True, frozen=True)
class TenantUsage:
    """What `GET /v1/usage` answers (see module docstring); `to_json` is the response body."""

    tenant: str
    requests: dict[str, object]
    """Lifetime counters: admitted, dispatched, completed, cancelled, expired, preempted, and
    rejected by reason (quota, queue full, overload)."""
    outcomes: dict[Outcome, int]
    """Requests by how they ended (ok, client_disconnect, replica_error, timeout, ...)."""
    tokens: dict[str, int]
    queued: int
    running: int
    latency_s: dict[str, dict[str, float | int | None]]
    """Per stage (queue_wait, ttft, e2e, and the engine's own where it reports them): count, mean and
    the QUANTILES, in seconds."""
    quota: dict[str, dict[str, float] | int | None]

    def to_json(self) -> dict[str, object]:
        return {"object": "usage", **dataclasses.asdict(self)}


def tenant_usage(core: Scheduler, book: RequestBook, tenant: str) -> TenantUsage | None:
    """`tenant`'s usage from the scheduler core and the request book; None for an unknown tenant."""
    state = core.tenant_state(tenant)
    if state is None:
        return None
    config = core.config.tenant_map()[tenant]
    latency: dict[str, dict[str, float | int | None]] = {}
    for kind in LATENCY_KINDS:
        hist = book.histograms.get((kind, tenant))
        if hist is None:
            continue
        count = sum(hist.counts)
        latency[kind] = {"count": count, "mean": hist.total / count if count else None,
                         **{name: hist.quantile(q) for name, q in QUANTILES.items()}}
    return TenantUsage(
        tenant=tenant,
        requests=dataclasses.asdict(state.counters),
        outcomes={outcome: n for (who, outcome), n in sorted(book.outcomes.items()) if who == tenant},
        tokens={"prompt": book.prompt_tokens.get(tenant, 0), "completion": book.tokens.get(tenant, 0)},
        queued=state.queued,
        running=state.in_flight,
        latency_s=latency,
        quota={
            "requests_per_minute": _bucket(config.requests_per_minute, state.requests_left),
            "tokens_per_minute": _bucket(config.tokens_per_minute, state.tokens_left),
            "max_queued": config.max_queued,
        },
    )


def _bucket(per_minute: float | None, left: float | None) -> dict[str, float] | None:
    """A quota as {"limit", "left"}; None for an unlimited one."""
    if per_minute is None or left is None:
        return None
    return {"limit": per_minute, "left": round(left, 3)}
