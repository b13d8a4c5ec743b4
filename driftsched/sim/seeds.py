"""Several seeds of one experiment: the median and the spread of every figure.

`aggregate` walks the per-seed summaries (the summary.json documents) in parallel; each numeric leaf
becomes its median over the seeds (in ``median``, shaped like one summary, so the same table prints
it) and its [min, max] (in ``spread``). A null leaf (inf or NaN in a run) counts as +inf: a p99 that
fell on expired requests is the worst value, not a missing one. The comparisons (ratios) are computed
again from the median figures rather than taken as medians of per-seed ratios.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from driftsched.sim.report import comparisons


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
    median, spread = _walk(list(summaries))
    if "policies" in median and "estimator" in median:
        median["comparisons"] = comparisons(median["policies"], median["estimator"])
        spread.pop("comparisons", None)
    return {"seeds": [s.get("seed") for s in summaries], "median": median, "spread": spread}


def format_spread(combined: dict[str, Any]) -> str:
    """Overall and per-tenant E2E p50 / p99 as median [min, max] over the seeds."""
    med, spr = combined["median"]["policies"], combined["spread"]["policies"]

    def cell(m: float, s: list[float]) -> str:
        return f"{m:.1f} [{s[0]:.1f}, {s[1]:.1f}]"

    lines = ["E2E p50 and p99 (s): median [min, max] over seeds"]
    for name, p in med.items():
        e, se = p["e2e_s"], spr[name]["e2e_s"]
        lines.append(f"{name:<16} p50 {cell(e['p50'], se['p50']):<26} p99 {cell(e['p99'], se['p99'])}")
        for tenant, t in p["per_tenant"].items():
            st = spr[name]["per_tenant"][tenant]["e2e_s"]
            lines.append(
                f"  {tenant:<22} p50 {cell(t['e2e_s']['p50'], st['p50']):<26} "
                f"p99 {cell(t['e2e_s']['p99'], st['p99'])}"
            )
    return "\n".join(lines)
