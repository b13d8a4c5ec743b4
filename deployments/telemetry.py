"""Per-tenant latency histograms and token counters, gathered centrally from every ingress.

Each ingress reports a finished request's timings on the release call it makes anyway, so the scheduler
actor holds one book for the whole application and `/metrics` is the same whichever ingress replica
answers. Buckets are fixed; the book is a plain value (dicts and lists) that crosses Ray as-is.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
LATENCY_KINDS: tuple[str, ...] = ("queue_wait", "ttft", "e2e", "engine_queue", "engine_ttft")


@dataclass(slots=True)
class Histogram:
    """Cumulative-at-export histogram: counts per bucket (last one is +Inf) and the sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, value)] += 1
        self.total += value

    def quantile(self, q: float) -> float | None:
        """The q-quantile estimated from the buckets (None when empty).

        As Prometheus's `histogram_quantile`: linear within the bucket holding the rank, from 0 for the
        first bucket; a rank in the +Inf bucket answers the highest finite bound.
        """
        n = sum(self.counts)
        if n == 0:
            return None
        rank, seen = q * n, 0
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                if i == len(LATENCY_BUCKETS_S):
                    return LATENCY_BUCKETS_S[-1]
                lower = LATENCY_BUCKETS_S[i - 1] if i else 0.0
                return lower + (LATENCY_BUCKETS_S[i] - lower) * (rank - seen) / count
            seen += count
        return LATENCY_BUCKETS_S[-1]


class Outcome(enum.StrEnum):
    """How a request that reached the scheduler ended, as /metrics and /v1/usage count it."""

    OK = "ok"  # finished; the client got every token
    CLIENT_DISCONNECT = "client_disconnect"  # the client went away first
    REPLICA_ERROR = "replica_error"  # its replica failed, stalled or ended the stream early
    ENGINE_ERROR = "engine_error"  # the engine refused or failed it
    TIMEOUT = "timeout"  # no slot within the queue deadline (first run, or a resumed one), or a stall
    RESUME_FAILED = "resume_failed"  # preempted or failed over, and could not be queued again


@dataclass(slots=True)
class RequestTimings:
    """What an ingress measured for one request (seconds; None where the stage was not reached)."""

    tenant: str
    queue_wait_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    engine_queue_s: float | None = None
    """Time queued inside the engine (vLLM) before first being scheduled."""
    engine_ttft_s: float | None = None
    """First-token latency as the engine measured it (from its arrival, excludes DriftSched's queue)."""
    output_tokens: int = 0
    prompt_tokens: int = 0
    """The client's prompt tokens (of a granted request; resumed runs' re-sent tokens not counted)."""
    outcome: Outcome = Outcome.OK


class RequestBook:
    """Histograms per (kind, tenant), tokens generated and prompt tokens per tenant, outcomes per
    (tenant, outcome)."""

    def __init__(self) -> None:
        self.histograms: dict[tuple[str, str], Histogram] = {}
        self.tokens: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.outcomes: dict[tuple[str, Outcome], int] = {}

    def record(self, timings: RequestTimings) -> None:
        tenant = timings.tenant
        for kind, value in zip(
            LATENCY_KINDS,
            (timings.queue_wait_s, timings.ttft_s, timings.e2e_s, timings.engine_queue_s,
             timings.engine_ttft_s),
            strict=True,
        ):
            if value is not None:
                hist = self.histograms.get((kind, tenant))
                if hist is None:
                    hist = self.histograms[(kind, tenant)] = Histogram()
                hist.observe(value)
        self.tokens[tenant] = self.tokens.get(tenant, 0) + timings.output_tokens
        self.prompt_tokens[tenant] = self.prompt_tokens.get(tenant, 0) + timings.prompt_tokens
        key = (tenant, timings.outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
