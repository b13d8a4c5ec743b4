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
    "policy", "tenant", "TTFT met", "TPOT met", "both met", "goodput tok/s", "goodput req/s",
    "TTFT p50 (s)", "TTFT p99 (s)", "E2E p50 (s)", "E2E p99 (s)", "rejected", "shed", "expired",
)

LEGEND = (
    "Every figure is over the *steady window*: the requests that arrived between 10 % and 90 % of the "
    "arrival span (the run's start and drain left out), each followed to completion. A request meets "
    "its tenant's *TTFT* objective when it completed and its first token came within the TTFT target "
    "of its arrival, and its *TPOT* objective when it completed and (finish − first token) / (output "
    "tokens − 1) is within the TPOT target (a one-token answer: when it met TTFT); *both met* is the "
    "share meeting both, of the requests sent less those rejected for the tenant's own doing, so a "
    "shed or expired request misses both. *Goodput*: the requests that met both objectives, and their "
    "output tokens, per second of the window. *Rejected*: refused for the request's or its tenant's "
    "own doing (bad input, over its quota or its queue cap); *shed*: refused for load (overload, an "
    "objective it could not meet); *expired*: left the queue at its deadline. Latency percentiles are "
    "over the requests that entered a queue: one that never finished counts as infinitely late (∞) "
    "for E2E, one that never got a first token for TTFT."
)


def results_table(summary: dict[str, Any], policies: Sequence[str] | None = None) -> str:
    """The table of `summary` (one run's, or the medians over seeds), for `policies` in that order
    (default: every policy in the summary); tenants in the order of the summary's ``tenants``, if any."""
    runs = summary["policies"]
    names = [p for p in (policies or runs) if p in runs]
    rows = []
    for name in names:
        p = runs[name]
        rows.append([f"**{name}**", "all", *_cells(p)])
        for tenant in _tenants(summary, [name]):
            if tenant in p["per_tenant"]:
                rows.append(["", tenant, *_cells(p["per_tenant"][tenant])])
    return markdown_table(HEADER, rows, align="ll" + "r" * (len(HEADER) - 2))


def summary_table(
    summary: dict[str, Any], policies: Sequence[str] | None = None, reference: str = "fifo"
) -> str:
    """One row per policy: each tenant's share meeting both objectives, then over all requests the
    goodput (and its ratio to `reference`'s, mean and 95 % interval over seeds, when there were several:
    the summary's ``vs_<reference>``, `seeds.versus`), the TTFT and E2E tails, and the share shed or
    expired."""
    runs = summary["policies"]
    names = [p for p in (policies or runs) if p in runs]
    tenants = _tenants(summary, names)
    vs = summary.get("vs_" + reference.replace("-", "_")) or {}
    with_ratio = any((e.get("goodput_tokens_ratio") or {}).get("ci95") for e in vs.values())
    header = (
        "policy", *(f"{t}: both met" for t in tenants), "goodput tok/s",
        *((f"goodput vs {reference}",) if with_ratio else ()),
        "TTFT p99 (s)", "E2E p99 (s)", "shed + expired",
    )
    rows = []
    for name in names:
        p = runs[name]
        ratio = "1 (reference)" if name == reference else _ratio(vs.get(name, {}).get("goodput_tokens_ratio"))
        rows.append([
            f"**{name}**",
            *(_share(_get(p["per_tenant"].get(t, {}), "slo", "both")) for t in tenants),
            _number(_get(p, "goodput", "tokens_per_s"), 0),
            *((ratio,) if with_ratio else ()),
            _number(p["ttft_s"]["p99"], 2),
            _number(p["e2e_s"]["p99"], 2),
            _share(_sum(p.get("shed_share"), p.get("expired_share"))),
        ])
    return markdown_table(header, rows)


PLACEMENT_LEGEND = (
    "Each placement rule ran the same requests (same workload, same seeds) under the same policy. "
    "*Hit rate*: prompt tokens the engines found in their prefix caches over the prompt tokens they "
    "were asked for (vLLM's prefix-cache hit rate), over the whole run; *one LRU cache* is the hit rate "
    "of a single LRU cache holding the pool's whole KV fed the same requests in arrival order, what "
    "perfect placement could approach. TTFT percentiles over the steady window, a request that never "
    "got a first token infinitely late. *Output tok/s*: tokens generated over the simulated run. *Busiest "
    "replica*: the tokens the busiest replica computed (prompt tokens prefilled and output tokens) over "
    "the mean."
)


def placement_comparison(summaries: dict[str, dict[str, Any]], policies: Sequence[str]) -> dict[str, Any]:
    """The figures placement is judged by, per rule (`summaries`: rule -> a run's summary, or the
    medians over seeds) and per policy of `policies` present in them."""
    first = next(iter(summaries.values()), {})
    reference = (first.get("prefix_cache_reference") or {}).get("hit_rate")
    rules: dict[str, dict[str, dict[str, float | None]]] = {}
    for rule, summary in summaries.items():
        runs = summary["policies"]
        rules[rule] = {}
        for name in [p for p in policies if p in runs] or list(runs)[:1]:
            p = runs[name]
            cache = p.get("prefix_cache") or {}
            rules[rule][name] = {
                "hit_rate": cache.get("hit_rate"),
                "cached_prompt_tokens": cache.get("cached_prompt_tokens"),
                "ttft_p50_s": p["ttft_s"]["p50"],
                "ttft_p90_s": p["ttft_s"]["p90"],
                "output_tokens_per_s": p.get("output_tokens_per_s"),
                "max_over_mean": (p.get("replica_share") or {}).get("max_over_mean"),
            }
    return {"reference_hit_rate": reference, "placements": rules}


def placement_table(comparison: dict[str, Any]) -> str:
    """`placement_comparison` as one Markdown table: a row per (rule, policy)."""
    header = ("placement", "policy", "hit rate", "TTFT p50 (s)", "TTFT p90 (s)", "output tok/s",
              "busiest replica")
    rows = [["one LRU cache", "", _share(comparison.get("reference_hit_rate")), "", "", "", ""]]
    for rule, by_policy in comparison["placements"].items():
        for name, f in by_policy.items():
            rows.append([
                f"**{rule}**", name, _share(f["hit_rate"]), _number(f["ttft_p50_s"], 2),
                _number(f["ttft_p90_s"], 2), _number(f["output_tokens_per_s"], 0),
                "–" if f["max_over_mean"] is None else f"{f['max_over_mean']:.2f}×",
            ])
    return markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


def window_and_objectives(summary: dict[str, Any]) -> str:
    """The note a results page states its measure in: the steady window and each tenant's objectives."""
    w = summary.get("window") or {}
    text = (
        f"Steady window: the requests that arrived from {_pct(w.get('from_share'))} to "
        f"{_pct(w.get('to_share'))} of the arrival span"
    )
    if w.get("start_s") is not None and w.get("end_s") is not None:
        requests = _number(w.get("requests"), 0)
        text += f" ({w['start_s']:,.1f}–{w['end_s']:,.1f} s, {requests} requests per policy)"
    text += ", each followed to completion."
    objectives = summary.get("objectives")
    if objectives:
        parts = []
        for tenant, o in objectives.items():
            part = f"{tenant} TTFT {_seconds(o['ttft_s'])}, TPOT {_seconds(o['tpot_s'])}"
            if o.get("e2e_s") is not None:
                part += f" (end to end {_seconds(o['e2e_s'])}, in summary.json)"
            parts.append(part)
        text += " Objectives per tenant: " + "; ".join(parts) + "."
    else:
        text += " No objectives were given, so there is no attainment or goodput."
    return text


def _tenants(summary: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The summary's ``tenants`` order, then any other tenant of `names`' runs."""
    order = list(summary.get("tenants", ()))
    order = [t for t in order if any(t in summary["policies"][n]["per_tenant"] for n in names)]
    for name in names:
        order += [t for t in summary["policies"][name]["per_tenant"] if t not in order]
    return order


def _get(block: dict[str, Any], group: str, key: str) -> float | None:
    value = (block.get(group) or {}).get(key)
    return None if value is None else float(value)


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _ratio(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("value") is None or math.isnan(ci["value"]):
        return "–"
    if math.isinf(ci["value"]):
        return "∞"
    interval = ci.get("ci95")
    text = f"{ci['value']:.2f}×"
    return text + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _cells(p: dict[str, Any]) -> list[str]:
    return [
        _share(_get(p, "slo", "ttft")),
        _share(_get(p, "slo", "tpot")),
        _share(_get(p, "slo", "both")),
        _number(_get(p, "goodput", "tokens_per_s"), 0),
        _number(_get(p, "goodput", "requests_per_s"), 2),
        _number(p["ttft_s"]["p50"], 2),
        _number(p["ttft_s"]["p99"], 2),
        _number(p["e2e_s"]["p50"], 2),
        _number(p["e2e_s"]["p99"], 2),
        _share(p.get("rejected_share")),
        _share(p.get("shed_share")),
        _share(p.get("expired_share")),
    ]


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{100 * share:g} %"


def _seconds(value: float) -> str:
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


def _share(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"
