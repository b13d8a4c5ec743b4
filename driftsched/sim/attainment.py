"""Whether each request got what its tenant was promised, and which requests a report measures.

Every report (`driftsched simulate`, `driftsched bench live`, benchmarks/bench_vllm.py) judges requests
the same way, from their records (`RunRecords`) and their tenants' objectives (`CoreConfig.objectives()`):

* **TTFT** met: the request completed and ``first_token - arrival <= ttft_s``.
* **TPOT** met: the request completed and ``(finish - first_token) / (output_tokens - 1) <= tpot_s``;
  a request of one output token has no time between tokens, so it meets TPOT when it meets TTFT.
* A request that did not complete (refused at admission, expired in its queue, failed) misses both:
  a tenant is promised answers, and a policy must not look better by dropping the hard ones.

A request's objectives are its tenant's unless the records carry its own (`RunRecords.ttft_slo_s`,
`tpot_slo_s`: a live request that asked for stricter ones; NaN there means its tenant's).

The **steady window** leaves out the run's start (empty queues) and end (no arrivals behind the last
requests, so the backlog drains unopposed): a report measures the requests that arrived between 10 %
and 90 % of the arrival span, each followed to completion however late it finishes. Rates (goodput)
are per second of the window's length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from driftsched.core.slo import Objectives
from driftsched.sim.records import RunRecords

STEADY_WINDOW = (0.1, 0.9)
"""The steady window as shares of the arrival span: from 10 % to 90 % of it."""

OUTCOMES = ("completed", "rejected", "shed", "expired", "error")
"""How a request ended, one of these each (`outcomes`)."""

OVER_ALLOWANCE = frozenset(
    {"invalid_request", "unknown_tenant", "tenant_request_quota", "tenant_token_quota", "tenant_queue_full"}
)
"""Refusal reasons that are the request's or its tenant's own doing (bad input, over its quota or its
own queue cap): a *rejected* request, outside what the tenant was promised, so not judged against its
objectives (the live request book, `deployments.telemetry.NOT_JUDGED_REJECTIONS`, agrees). Every other
refusal turns a request away for load (overload, an objective it could not meet): a *shed* one, which
misses both objectives."""


@dataclass(frozen=True, slots=True)
class Window:
    """The arrival interval [start_s, end_s] a report measures (seconds on the run's axis)."""

    start_s: float
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


def steady_window(rec: RunRecords, shares: tuple[float, float] | None = STEADY_WINDOW) -> Window:
    """The window from `shares[0]` to `shares[1]` of the arrival span (first to last arrival);
    None: the whole span. A run without arrivals has an empty window at 0."""
    arrival = rec.arrival[~np.isnan(rec.arrival)]
    if arrival.size == 0:
        return Window(0.0, 0.0)
    t0, span = float(arrival.min()), float(arrival.max() - arrival.min())
    lo, hi = shares if shares is not None else (0.0, 1.0)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"window shares must satisfy 0 <= start <= end <= 1, got {shares}")
    return Window(t0 + lo * span, t0 + hi * span)


def in_window(rec: RunRecords, window: Window) -> np.ndarray:
    """Which requests arrived inside `window` (both ends included)."""
    return (rec.arrival >= window.start_s) & (rec.arrival <= window.end_s)


def is_expired(status: str) -> bool:
    """A request admitted to a queue that left it at its deadline (the simulator's "expired", a live 504)."""
    return status == "expired" or status.startswith("http_504")


def outcome(status: str, admitted: bool, completed: bool) -> str:
    """How one request ended (one of `OUTCOMES`), from its record's status.

    Statuses are the simulator's ("completed", "expired", a `RejectReason` value, "unfinished") or a
    live client's ("completed", ``http_<status>:<code>``, "timeout", "truncated", ...).
    """
    if completed:
        return "completed"
    if is_expired(status):
        return "expired"
    if status.startswith("http_"):
        http, _, code = status.partition(":")
        if code in OVER_ALLOWANCE:
            return "rejected"
        if http in ("http_429", "http_503"):
            return "shed"
        return "rejected" if http.startswith("http_4") else "error"
    if status in OVER_ALLOWANCE:
        return "rejected"
    if not admitted and status != "unfinished":
        return "shed"
    return "error"


def outcomes(rec: RunRecords) -> np.ndarray:
    """`outcome` of every request, as an array of strings."""
    done = ~np.isnan(rec.finish)
    return np.array(
        [outcome(s, bool(a), bool(d)) for s, a, d in zip(rec.status, rec.admitted, done, strict=True)],
        dtype=object,
    )


def objective_arrays(rec: RunRecords, objectives: Mapping[str, Objectives]) -> tuple[np.ndarray, np.ndarray]:
    """Each request's TTFT and TPOT objectives (s): its own where the records carry one, else its tenant's.

    A request whose tenant has none and which carries none is a `ValueError` naming those tenants:
    give them objectives (`CoreConfig.objectives()` gives every configured tenant its tier's).
    """
    n = len(rec)
    tenant_ttft = np.array([objectives[t].ttft_s if t in objectives else np.nan for t in rec.tenant.tolist()])
    tenant_tpot = np.array([objectives[t].tpot_s if t in objectives else np.nan for t in rec.tenant.tolist()])
    ttft = _own_or(rec.ttft_slo_s, tenant_ttft, n)
    tpot = _own_or(rec.tpot_slo_s, tenant_tpot, n)
    missing = np.isnan(ttft) | np.isnan(tpot)
    if missing.any():
        tenants = sorted({str(t) for t in rec.tenant[missing]})
        raise ValueError(f"no latency objectives for tenants {tenants}; pass objectives for every tenant")
    return ttft.reshape(n), tpot.reshape(n)


def _own_or(own: np.ndarray | None, tenant: np.ndarray, n: int) -> np.ndarray:
    if own is None:
        return tenant.astype(float).reshape(n)
    return np.where(np.isnan(own), tenant, own).astype(float).reshape(n)


def slo_flags(rec: RunRecords, objectives: Mapping[str, Objectives]) -> tuple[np.ndarray, np.ndarray]:
    """(ttft_met, tpot_met): boolean arrays over the requests of `rec` (see the module docstring).

    ``ttft_met & tpot_met`` is "both", what goodput counts. `objectives` maps tenants to theirs
    (`CoreConfig.objectives()`); a request's own objectives in the records take precedence.
    """
    ttft_slo, tpot_slo = objective_arrays(rec, objectives)
    done = ~np.isnan(rec.finish) & ~np.isnan(rec.first_token)
    with np.errstate(invalid="ignore", divide="ignore"):
        ttft = rec.first_token - rec.arrival
        ttft_met = done & (ttft <= ttft_slo)
        gaps = rec.output_tokens - 1
        tpot = (rec.finish - rec.first_token) / np.where(gaps > 0, gaps, np.nan)
        one_token = done & (rec.output_tokens <= 1)
        tpot_met = np.where(one_token, ttft_met, done & (tpot <= tpot_slo))
    return ttft_met.astype(bool), tpot_met.astype(bool)


def e2e_flags(rec: RunRecords, objectives: Mapping[str, Objectives]) -> tuple[np.ndarray, np.ndarray]:
    """(judged, met) for the optional end-to-end objective (``latency_slo_s``): judged where the
    request's tenant has one, met where it completed within it."""
    e2e = np.array(
        [o.e2e_s if (o := objectives.get(t)) is not None and o.e2e_s is not None else np.nan
         for t in rec.tenant.tolist()],
        dtype=float,
    ).reshape(len(rec))
    judged = ~np.isnan(e2e)
    with np.errstate(invalid="ignore"):
        met = judged & ~np.isnan(rec.finish) & (rec.finish - rec.arrival <= e2e)
    return judged, met


__all__ = [
    "OUTCOMES",
    "STEADY_WINDOW",
    "Window",
    "e2e_flags",
    "in_window",
    "is_expired",
    "objective_arrays",
    "outcome",
    "outcomes",
    "slo_flags",
    "steady_window",
]
