"""Several seeds of one experiment: the median and the spread of every figure.

`aggregate` walks the per-seed summaries (the summary.json documents) in parallel; each numeric leaf
becomes its median over the seeds (in ``median``, shaped like one summary, so the same table prints
it) and its [min, max] (in ``spread``). A null leaf (inf or NaN in a run) counts as +inf: a p99 that
fell on expired requests is the worst value, not a missing one. The comparisons (ratios) are computed
again from the median figures rather than taken as medians of per-seed ratios.

`versus` compares every policy with a reference (FIFO) seed by seed: each seed runs every policy on
the same arrivals, so the ratio (or, for attainment, the difference) is taken within a seed, and the
seeds' values give a mean with a Student-t 95 % interval, ``mean ± t(0.975, n-1) · s / sqrt(n)``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

REFERENCE = "fifo"
"""The policy every other is compared with (`versus`)."""


def _leaf(values: list[Any]) -> tuple[Any, Any]:
    if all(isinstance(v, bool) or not isinstance(v, int | float | None) for v in values):
        return values[0], None
    nums = sorted(math.inf if v is None or v != v else float(v) for v in values)
    n = len(nums)
    median = nums[n // 2] if n % 2 else (nums[n // 2 - 1] + nums[n // 2]) / 2
    return median, [nums[0], nums[-1]]


def _walk(docs: list[Any]) -> tuple[Any, Any]:
    first = docs[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(d, dict) and k in d for d in docs)]
        med, spread = {}, {}
        for k in keys:
            med[k], spread[k] = _walk([d[k] for d in docs])
        return med, {k: v for k, v in spread.items() if v is not None}
    if isinstance(first, list):
        return first, None
    return _leaf(docs)


def aggregate(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"seeds": [...], "median": summary-shaped medians, "spread": [min, max] per numeric figure}."""
    from driftsched.sim.report import comparisons  # the report imports this module

    median, spread = _walk(list(summaries))
    if "policies" in median and "estimator" in median:
        median["comparisons"] = comparisons(median["policies"], median["estimator"])
        spread.pop("comparisons", None)
    combined = {"seeds": [s.get("seed") for s in summaries], "median": median, "spread": spread}
    spread.pop("vs_fifo", None)
    median.pop("vs_fifo", None)
    if "policies" in median and REFERENCE in median["policies"]:
        vs = versus(summaries, REFERENCE)
        median["vs_fifo"] = combined["vs_fifo"] = vs  # the median page shows it too
    return combined


# -- paired comparison with a reference policy ---------------------------------------------------------

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052,
         2.048, 2.045, 2.042)
"""Student-t 0.975 quantiles for 1..30 degrees of freedom."""


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (beyond 30: the Cornish-Fisher
    expansion, within 0.001 of the exact value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """{"value": mean, "ci95": [lo, hi] or None, "n": seeds used} of per-seed values.

    NaN values (a ratio that is undefined in that seed, e.g. inf over inf) are left out and ``n`` says
    how many remain; an infinite value makes the mean infinite, without an interval; one value has no
    interval."""
    kept = [float(v) for v in values if not math.isnan(v)]
    n = len(kept)
    if n == 0:
        return {"value": float("nan"), "ci95": None, "n": 0}
    if any(math.isinf(v) for v in kept):
        return {"value": sum(kept), "ci95": None, "n": n}  # inf, or nan if both signs
    mean = statistics.fmean(kept)
    if n == 1:
        return {"value": mean, "ci95": None, "n": 1}
    half = t975(n - 1) * statistics.stdev(kept) / math.sqrt(n)
    return {"value": mean, "ci95": [mean - half, mean + half], "n": n}


def _number(value: Any, null: float) -> float:
    """A figure of a summary, in memory (float) or read back from JSON (None for inf or NaN)."""
    return null if value is None else float(value)


def _ratio(a: float, b: float) -> float:
    if b == 0 or (math.isinf(a) and math.isinf(b)) or math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b


_RATIOS: tuple[tuple[str, Callable[[dict[str, Any]], float]], ...] = (
    ("goodput_tokens_ratio", lambda p: _number((p.get("goodput") or {}).get("tokens_per_s"), math.nan)),
    ("goodput_requests_ratio", lambda p: _number((p.get("goodput") or {}).get("requests_per_s"), math.nan)),
    ("ttft_p99_ratio", lambda p: _number(p["ttft_s"]["p99"], math.inf)),
    ("e2e_p99_ratio", lambda p: _number(p["e2e_s"]["p99"], math.inf)),
)
"""Figures compared as ratio policy / reference; a null percentile was inf (censored), other nulls NaN."""


def versus(summaries: Sequence[dict[str, Any]], reference: str = REFERENCE) -> dict[str, Any]:
    """Every policy against `reference`, paired by seed (one summary per seed), as `mean_ci` entries.

    Per policy: ``goodput_tokens_ratio``, ``goodput_requests_ratio``, ``ttft_p99_ratio`` and
    ``e2e_p99_ratio`` (policy / reference in each seed), and ``slo_both_points``, per tenant the
    difference in percentage points of the share meeting both objectives (policy - reference). Seeds
    without the reference are skipped; figures a summary lacks (no objectives) are left out.
    """
    seeds = [s["policies"] for s in summaries if reference in s.get("policies", {})]
    out: dict[str, Any] = {}
    names = list(dict.fromkeys(n for pol in seeds for n in pol if n != reference))
    for name in names:
        pairs = [(pol[name], pol[reference]) for pol in seeds if name in pol]
        entry: dict[str, Any] = {}
        for key, figure in _RATIOS:
            values = [_ratio(figure(mine), figure(ref)) for mine, ref in pairs]
            if not all(math.isnan(v) for v in values) or key.endswith("p99_ratio"):
                entry[key] = mean_ci(values)
        points: dict[str, Any] = {}
        tenants = dict.fromkeys(t for mine, _ in pairs for t in mine.get("per_tenant", {}))
        for tenant in tenants:
            diffs = []
            for mine, ref in pairs:
                a = ((mine["per_tenant"].get(tenant) or {}).get("slo") or {}).get("both")
                b = ((ref["per_tenant"].get(tenant) or {}).get("slo") or {}).get("both")
                diffs.append(math.nan if a is None or b is None else 100 * (float(a) - float(b)))
            if not all(math.isnan(d) for d in diffs):
                points[tenant] = mean_ci(diffs)
        if points:
            entry["slo_both_points"] = points
        out[name] = entry
    return out


def format_versus(vs: dict[str, Any], reference: str = REFERENCE) -> str:
    """`versus` as text: per policy, each ratio and each tenant's attainment difference."""
    lines = [f"vs {reference}, paired by seed: mean [95% interval] (ratios; attainment of both "
             "objectives in points)"]
    for name, entry in vs.items():
        ratios = [f"{key.removesuffix('_ratio')} {format_ci(entry[key], 'x')}"
                  for key, _ in _RATIOS if key in entry]
        lines.append(f"{name:<16} " + ", ".join(ratios))
        for tenant, ci in (entry.get("slo_both_points") or {}).items():
            lines.append(f"  {tenant:<22} both {format_ci(ci, ' pts', signed=True)}")
    return "\n".join(lines)


def format_ci(ci: dict[str, Any] | None, unit: str = "", signed: bool = False) -> str:
    """"1.02x [0.98, 1.05]" (or without the interval for one seed); "n/a" when undefined."""
    if not ci or ci.get("value") is None or ci["value"] != ci["value"]:
        return "n/a"
    if math.isinf(ci["value"]):
        return "inf (a p99 on requests that never finished)" if ci["value"] > 0 else "-inf"
    spec = "+.2f" if signed else ".2f"
    value = format(ci["value"], spec)
    interval = ci.get("ci95")
    if not interval or any(v is None for v in interval):
        return f"{value}{unit}"
    return f"{value}{unit} [{interval[0]:{spec}}, {interval[1]:{spec}}]"


def format_spread(combined: dict[str, Any]) -> str:
    """Per policy and tenant: attainment of both objectives, goodput, TTFT p99 and E2E p99 as
    median [min, max] over the seeds (each where the summaries have it)."""
    med, spr = combined["median"]["policies"], combined["spread"]["policies"]

    def cell(m: Any, s: Any, scale: float = 1.0, digits: int = 1) -> str:
        if m is None or not isinstance(s, list):
            return "n/a"
        return f"{scale * m:.{digits}f} [{scale * s[0]:.{digits}f}, {scale * s[1]:.{digits}f}]"

    def figures(p: dict[str, Any], sp: dict[str, Any]) -> str:
        parts = []
        if "slo" in p:
            parts.append(f"both % {cell(p['slo']['both'], sp.get('slo', {}).get('both'), 100):<22}")
        if "goodput" in p:
            g, sg = p["goodput"]["tokens_per_s"], sp.get("goodput", {}).get("tokens_per_s")
            parts.append(f"goodput tok/s {cell(g, sg, digits=0):<20}")
        parts.append(f"TTFT p99 {cell(p['ttft_s']['p99'], sp.get('ttft_s', {}).get('p99')):<22}")
        parts.append(f"E2E p99 {cell(p['e2e_s']['p99'], sp.get('e2e_s', {}).get('p99'))}")
        return " ".join(parts)

    lines = ["median [min, max] over seeds (latencies in s)"]
    for name, p in med.items():
        lines.append(f"{name:<16} {figures(p, spr.get(name, {}))}")
        for tenant, t in p["per_tenant"].items():
            st = spr.get(name, {}).get("per_tenant", {}).get(tenant, {})
            lines.append(f"  {tenant:<22} {figures(t, st)}")
    return "\n".join(lines)


def verdict(ci: dict[str, Any], ok: Callable[[float], bool]) -> str:
    """"met" when the whole 95 % interval satisfies `ok`, "missed" when none of it does, else
    "unresolved"; one seed (no interval) judges the value alone, and says so."""
    interval = ci.get("ci95")
    if not interval:
        value = ci["value"]
        return ("met" if ok(value) else "missed") + (" (1 seed)" if ci.get("n", 0) <= 1 else "")
    lo, hi = interval
    if ok(lo) and ok(hi):
        return "met"
    if not ok(lo) and not ok(hi):
        return "missed"
    return "unresolved"


def ci_text(ci: dict[str, Any], fmt: str = ".2f", unit: str = "") -> str:
    """A mean with its interval, e.g. "1.02 [0.98, 1.06]x"."""
    value = ci["value"]
    text = "inf" if math.isinf(value) else format(value, fmt)
    if ci.get("ci95"):
        lo, hi = ci["ci95"]
        text += f" [{lo:{fmt}}, {hi:{fmt}}]"
    return text + unit
