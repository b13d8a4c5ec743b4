"""The Markdown results table of a run's summary (`driftsched simulate`, `driftsched bench live`).

One table, the policies as row groups: for each policy a row over all requests, then one per tenant.
Every figure is read from the summary that `driftsched.sim.report` computed from the run's records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from driftsched.results import markdown_table

HEADER = (
    "policy", "tenant", "completed", "shed", "expired", "goodput tok/s", "goodput req/s",
    "E2E p50 (s)", "E2E p99 (s)", "TTFT p50 (s)", "TTFT p99 (s)", "SLO attainment",
)

LEGEND = (
    "Shares are of the requests sent: *completed*; *shed*, refused at admission (quota, queue limit, "
    "size); *expired*, left the queue at its deadline. Goodput counts completed requests only: their "
    "output tokens and their number per second of the run (first arrival to last finish). E2E "
    "percentiles count an expired or failed request as infinitely late (∞); TTFT is over completed "
    "requests. SLO attainment: the share of a tenant's requests completed within its `latency_slo_s` "
    "(shed and expired requests miss it); the *all* row judges the tenants that have one; – where "
    "none has."
)


def results_table(summary: dict[str, Any], policies: Sequence[str] | None = None) -> str:
    """The table of `summary` (one run's, or the medians over seeds), for `policies` in that order
    (default: every policy in the summary); tenants in the order of the summary's ``tenants``, if any."""
    runs = summary["policies"]
    names = [p for p in (policies or runs) if p in runs]
    rows = []
    for name in names:
        p = runs[name]
        rows.append([f"**{name}**", "all", *_cells(p["outcomes"], p["e2e_s"], p["ttft_s"])])
        order = [t for t in summary.get("tenants", ()) if t in p["per_tenant"]]
        for tenant in order + [t for t in p["per_tenant"] if t not in order]:
            t = p["per_tenant"][tenant]
            rows.append(["", tenant, *_cells(t, t["e2e_s"], t["ttft_s"])])
    return markdown_table(HEADER, rows, align="ll" + "r" * (len(HEADER) - 2))


def summary_table(summary: dict[str, Any], policies: Sequence[str] | None = None) -> str:
    """One row per policy: each tenant's SLO attainment (tenants with an objective), then goodput, the
    median E2E latency and the TTFT tail over all requests, and the share shed or expired."""
    runs = summary["policies"]
    names = [p for p in (policies or runs) if p in runs]
    order = list(summary.get("tenants", ()))
    for name in names:
        order += [t for t in runs[name]["per_tenant"] if t not in order]
    judged = [
        t for t in order
        if any(_known(runs[n]["per_tenant"].get(t, {}).get("slo_attainment")) for n in names)
    ]
    header = (
        "policy", *(f"{t}: SLO attainment" for t in judged),
        "goodput tok/s", "E2E p50 (s)", "TTFT p99 (s)", "shed + expired",
    )
    rows = []
    for name in names:
        p = runs[name]
        out = p["outcomes"]
        rows.append([
            f"**{name}**",
            *(_share(p["per_tenant"].get(t, {}).get("slo_attainment")) for t in judged),
            _number(out["goodput_tokens_per_s"], 0),
            _number(p["e2e_s"]["p50"], 2),
            _number(p["ttft_s"]["p99"], 2),
            _share(out["shed_share"] + out["expired_share"]),
        ])
    return markdown_table(header, rows)


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _cells(outcomes: dict[str, Any], e2e: dict[str, float], ttft: dict[str, float]) -> list[str]:
    return [
        _share(outcomes["completed_share"]),
        _share(outcomes["shed_share"]),
        _share(outcomes["expired_share"]),
        _number(outcomes["goodput_tokens_per_s"], 0),
        _number(outcomes["goodput_requests_per_s"], 2),
        _number(e2e["p50"], 2),
        _number(e2e["p99"], 2),
        _number(ttft["p50"], 2),
        _number(ttft["p99"], 2),
        _share(outcomes.get("slo_attainment")),
    ]


def _share(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"
