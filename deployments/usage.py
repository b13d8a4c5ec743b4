"""One tenant's own usage (GET /v1/usage), built in the scheduler actor in one call.

Everything here is the asking tenant's alone: its lifetime request counters, how its granted requests
ended, its prompt and generated tokens, its requests queued and running now, its latency percentiles,
its quota left, how its requests fared against its latency objectives (`slo`, `goodput`; judged as
`deployments.telemetry.judge` defines), and how much of its prompts the engines found in their prefix
caches (`prefix_cache`). Nothing names or counts another tenant. Percentiles are
estimated from the request book's fixed latency buckets (`Histogram.quantile`), so they are as coarse
as those buckets; the SLO shares are exact counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from deployments.telemetry import LATENCY_KINDS, Outcome, PrefixTally, RequestBook, SloTally, shed_count
from driftsched.core.scheduler import Scheduler
from driftsched.core.slo import Objectives

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass(slots=True, frozen=True)
class TenantUsage:
    """What `GET /v1/usage` answers (see module docstring); `to_json` is the response body."""

    tenant: str
    requests: dict[str, object]
    """Lifetime counters: admitted, dispatched, completed, cancelled, expired, preempted, revoked, and
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
    slo: dict[str, object] = dataclasses.field(default_factory=dict)
    """The tenant's objectives (`objectives`, and the `strictest` a request may ask for), the requests
    `judged` against their own objectives (refusals that count as misses included), and the shares of
    them that met `ttft`, `tpot` and `both`, were `shed` (refused at admission) and `expired`."""
    goodput: dict[str, float | int | None] = dataclasses.field(default_factory=dict)
    """Requests that met both objectives and their output tokens: totals, and per second over
    `window_s` (first judged arrival to last judged end)."""
    prefix_cache: dict[str, float | int | None] = dataclasses.field(default_factory=dict)
    """Of the prompt tokens of its completed requests whose engine reports its prefix cache
    (`prompt_tokens`), those found cached (`cached_prompt_tokens`) and their share (`hit_rate`, None
    before any)."""

    def to_json(self) -> dict[str, object]:
        return {"object": "usage", **dataclasses.asdict(self)}


def tenant_usage(core: Scheduler, book: RequestBook, tenant: str) -> TenantUsage | None:
    """`tenant`'s usage from the scheduler core and the request book; None for an unknown tenant."""
    state = core.tenant_state(tenant)
    if state is None:
        return None
    config = core.config.tenant_map()[tenant]
    table = core.config.objective_table()
    latency: dict[str, dict[str, float | int | None]] = {}
    for kind in LATENCY_KINDS:
        hist = book.histograms.get((kind, tenant))
        if hist is None:
            continue
        count = sum(hist.counts)
        latency[kind] = {"count": count, "mean": hist.total / count if count else None,
                         **{name: hist.quantile(q) for name, q in QUANTILES.items()}}
    slo, goodput = slo_report(book.slo.get(tenant), shed_count(state.counters.rejected),
                              config.objectives(table), config.objective_floor(table))
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
        slo=slo,
        goodput=goodput,
        prefix_cache=prefix_report(book.prefix.get(tenant)),
    )


def prefix_report(tally: PrefixTally | None) -> dict[str, float | int | None]:
    """`TenantUsage.prefix_cache` from a tenant's prefix-cache tally."""
    tally = tally or PrefixTally()
    rate = tally.hit_rate
    return {"hit_rate": None if rate is None else round(rate, 6), "cached_prompt_tokens": tally.hit_tokens,
            "prompt_tokens": tally.query_tokens}


def slo_report(tally: SloTally | None, shed: int, objectives: Objectives, strictest: Objectives
               ) -> tuple[dict[str, object], dict[str, float | int | None]]:
    """`TenantUsage.slo` and `.goodput` from a tenant's tally and its refusals that count as misses."""
    tally = tally or SloTally()
    judged = tally.judged + shed

    def share(n: int) -> float | None:
        return round(n / judged, 6) if judged else None

    span = tally.span_s

    def rate(n: int) -> float | None:
        return round(n / span, 6) if span else None

    slo: dict[str, object] = {
        "objectives": {"ttft_s": objectives.ttft_s, "tpot_s": objectives.tpot_s, "e2e_s": objectives.e2e_s},
        "strictest": {"ttft_s": strictest.ttft_s, "tpot_s": strictest.tpot_s},
        "judged": judged,
        "ttft": share(tally.ttft), "tpot": share(tally.tpot), "both": share(tally.both),
        "shed": share(shed), "expired": share(tally.expired),
    }
    goodput: dict[str, float | int | None] = {
        "requests": tally.both, "tokens": tally.good_tokens,
        "window_s": None if span is None else round(span, 6),
        "requests_per_s": rate(tally.both), "tokens_per_s": rate(tally.good_tokens),
    }
    return slo, goodput


def _bucket(per_minute: float | None, left: float | None) -> dict[str, float] | None:
    """A quota as {"limit", "left"}; None for an unlimited one."""
    if per_minute is None or left is None:
        return None
    return {"limit": per_minute, "left": round(left, 3)}
