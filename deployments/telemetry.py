"""Per-tenant latency histograms and token counters, gathered centrally from every ingress.

Each ingress reports a finished request's timings on the release call it makes anyway, so the scheduler
actor holds one book for the whole application and `/metrics` is the same whichever ingress replica
answers. Buckets are fixed; the book is a plain value (dicts and lists) that crosses Ray as-is.

The book also judges each request against the latency objectives its ticket was held to
(`judge`, definitions shared with the simulator's reports):

* TTFT = first token - arrival, met when <= the TTFT objective;
* TPOT = (finish - first token) / (output tokens - 1), met when <= the TPOT objective; a request with
  one output token meets TPOT when it meets TTFT;
* a request meets an objective only if it completed: one that expired, failed or could not be resumed
  misses both. One whose client left first is not judged (nobody was left to serve), and neither is one
  refused at admission here: the scheduler's counters hold those (`shed_count` says which count as misses).

Goodput is the requests, and their output tokens, that met both.

The book also counts each completed request's prompt tokens and those its engine found in its prefix
cache (`PrefixTally`), per tenant and per (replica, tenant): the hit rate cache-aware placement earns.
A request counts once, on the replica that finished it, with the cached tokens of that run (of a
resumed request, those of its own prompt: what the client's usage reports). Per-replica entries go when
the replica does (`forget_replica`), so the book stays bounded as replicas come and go; the per-tenant
totals stay.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from driftsched.core.request import RejectReason

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
    ttft_slo_s: float | None = None
    """The TTFT objective the request was held to (its ticket's); None: not judged."""
    tpot_slo_s: float | None = None
    """The TPOT objective the request was held to (its ticket's)."""
    arrival_s: float | None = None
    """Wall-clock arrival (unix seconds): with `ended_s`, the span goodput is a rate over."""
    ended_s: float | None = None
    """Wall-clock time the request ended, however it ended."""
    cached_tokens: int | None = None
    """Of `prompt_tokens`, those the engine found in its prefix cache (of a completed request whose
    engine reports it; None otherwise)."""


NOT_JUDGED_REJECTIONS: frozenset[str] = frozenset({
    RejectReason.INVALID, RejectReason.UNKNOWN_TENANT,
    RejectReason.REQUEST_QUOTA, RejectReason.TOKEN_QUOTA, RejectReason.TENANT_QUEUE_FULL,
})
"""Admission refusals that are not the service's misses: the caller's own error, or the tenant over its
own quota or queue cap (outside what it was promised). Every other refusal (overload, shedding) is a
request that missed both objectives."""


def shed_count(rejected: Mapping[str, int]) -> int:
    """The refusals among `rejected` (reason -> count) that count as missed objectives."""
    return sum(n for reason, n in rejected.items() if reason not in NOT_JUDGED_REJECTIONS)


def judge(timings: RequestTimings) -> tuple[bool, bool] | None:
    """(met TTFT, met TPOT) for one request (module docstring), or None when it is not judged."""
    if timings.ttft_slo_s is None or timings.tpot_slo_s is None:
        return None
    if timings.outcome == Outcome.CLIENT_DISCONNECT:
        return None
    ttft, e2e = timings.ttft_s, timings.e2e_s
    if timings.outcome != Outcome.OK or ttft is None or e2e is None:
        return False, False
    met_ttft = ttft <= timings.ttft_slo_s
    if timings.output_tokens <= 1:
        return met_ttft, met_ttft
    return met_ttft, (e2e - ttft) / (timings.output_tokens - 1) <= timings.tpot_slo_s


@dataclass(slots=True)
class SloTally:
    """One tenant's judged requests: how many met each objective, goodput tokens, and the span."""

    judged: int = 0
    """Requests judged (completed, expired or failed; not refused at admission, not abandoned)."""
    ttft: int = 0
    tpot: int = 0
    both: int = 0
    good_tokens: int = 0
    """Output tokens of the requests that met both objectives."""
    expired: int = 0
    """Judged requests that ran out of time (queue deadline, or a stall): outcome "timeout"."""
    first_arrival_s: float | None = None
    last_end_s: float | None = None

    def add(self, timings: RequestTimings, met: tuple[bool, bool]) -> None:
        met_ttft, met_tpot = met
        self.judged += 1
        self.ttft += met_ttft
        self.tpot += met_tpot
        if met_ttft and met_tpot:
            self.both += 1
            self.good_tokens += timings.output_tokens
        self.expired += timings.outcome == Outcome.TIMEOUT
        if timings.arrival_s is not None:
            first = self.first_arrival_s
            self.first_arrival_s = timings.arrival_s if first is None else min(first, timings.arrival_s)
        if timings.ended_s is not None:
            last = self.last_end_s
            self.last_end_s = timings.ended_s if last is None else max(last, timings.ended_s)

    @property
    def span_s(self) -> float | None:
        """From the first judged request's arrival to the last one's end (None before two stamps)."""
        if self.first_arrival_s is None or self.last_end_s is None:
            return None
        return max(0.0, self.last_end_s - self.first_arrival_s)


@dataclass(slots=True)
class PrefixTally:
    """Prompt tokens of completed requests whose engine reported its prefix cache, and those found cached."""

    query_tokens: int = 0
    hit_tokens: int = 0

    def add(self, query_tokens: int, hit_tokens: int) -> None:
        self.query_tokens += query_tokens
        self.hit_tokens += hit_tokens

    @property
    def hit_rate(self) -> float | None:
        """Cached over looked-up prompt tokens; None before any."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else None


class RequestBook:
    """Histograms per (kind, tenant), tokens generated and prompt tokens per tenant, outcomes per
    (tenant, outcome), each tenant's `SloTally`, and prefix-cache tallies per tenant and per
    (replica, tenant)."""

    def __init__(self) -> None:
        self.histograms: dict[tuple[str, str], Histogram] = {}
        self.tokens: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.outcomes: dict[tuple[str, Outcome], int] = {}
        self.slo: dict[str, SloTally] = {}
        self.prefix: dict[str, PrefixTally] = {}
        self.replica_prefix: dict[tuple[str, str], PrefixTally] = {}

    def forget_replica(self, replica: str) -> None:
        """Drop `replica`'s prefix-cache entries (it is gone); the tenants' totals keep its counts."""
        for key in [key for key in self.replica_prefix if key[0] == replica]:
            del self.replica_prefix[key]

    def record(self, timings: RequestTimings, replica: str = "") -> None:
        """Add one ended request, which ran last on `replica` ("" if it never got one)."""
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
        if timings.cached_tokens is not None and timings.outcome == Outcome.OK:
            query, hit = timings.prompt_tokens, min(timings.cached_tokens, timings.prompt_tokens)
            self.prefix.setdefault(tenant, PrefixTally()).add(query, hit)
            if replica:
                self.replica_prefix.setdefault((replica, tenant), PrefixTally()).add(query, hit)
        met = judge(timings)
        if met is not None:
            tally = self.slo.get(tenant)
            if tally is None:
                tally = self.slo[tenant] = SloTally()
            tally.add(timings, met)
