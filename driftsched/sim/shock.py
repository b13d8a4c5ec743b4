"""The drift shock: one instant mid-run where a tenant's prompts and a category's answers change, and
the report of SLO attainment around it.

The ``drift-shock`` workload is the paper's four tenants, stationary (`paper_workload` with
``drift=False``: no other change anywhere in the run), at a given load. At the arrival that reaches
`Shock.at` of the run (by arrival order), two things change for every later request, at once:

* `Shock.tenant`'s prompt template changes: each of its prompts gains `Shock.prompt_tokens` tokens
  (default 400: support-bot adds a policy section to its system prompt; negative shortens, never
  below 8 tokens). Its answers are unchanged by this, so an estimate that reads the prompt length
  (the drift tracker's prompt buckets, a category's prompt exponent) must not move with it.
* `Shock.category`'s answers become `Shock.factor` times longer, for every tenant that sends it
  (default chat, which three tenants send: a model update makes the assistant verbose, or, at 0.3,
  terse). Lengths are scaled before the request's own ``max_tokens`` caps them, as a real model's
  would be, so the realised factor can be below 3 (the report states it).

Everything else, arrivals included, is the stationary run's: the changed requests are exactly those
arriving at or after `Workload.shock_s`. The load is set on the stationary run, so a longer category
raises the offered work after the shock (the report states the load after it).

The report (`benchmarks/bench_drift_shock.py` prints it) runs one policy on three estimates,
``<policy>`` (drift-corrected), ``<policy>-uncorrected`` and ``<policy>-oracle`` (the true lengths),
and measures, over the steady window (`driftsched.sim.attainment.steady_window`: arrivals between
10 % and 90 % of the arrival span):

* **attainment per window**: the share of the requests arriving in each window (`window_s`, aligned
  on the shock: [shock + k·w, shock + (k+1)·w), whole windows inside the steady window only) that met
  both their TTFT and their TPOT objective, judged as every report judges them
  (`driftsched.sim.attainment.slo_flags`: shed, expired and failed requests miss both).
* **recovery**: how long after the shock a variant's attainment comes back within `tolerance`
  (2 points) of the oracle's and stays there: the start of the earliest post-shock window from which
  every later window has variant ≥ oracle − tolerance (0 if it never left; inf if the last window
  still misses). Being above the oracle is not a miss. A window of one seed holds a few hundred
  requests, so it is noisy; over several seeds the recovery is also taken on the seed-mean curve of
  variant − oracle (`combine_seeds`), beside the share of *pre-shock* windows that miss by the same
  rule (`misses_before`): how often noise alone looks like a miss.
* **the gap over a horizon** (`horizon_s`, default 5 modelled minutes): each variant's pooled
  attainment over [shock, shock + horizon), its difference from the corrected variant in points,
  and the area between the two curves, Σ (variant − corrected) · w over the horizon's windows, in
  point·minutes (one point for one minute).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from driftsched.core.slo import Objectives
from driftsched.sim.attainment import slo_flags, steady_window
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.records import RunRecords
from driftsched.sim.workload import CATEGORIES, Workload, WorkloadItem, paper_workload


@dataclass(frozen=True, slots=True)
class Shock:
    """What changes at the shock (module docstring)."""

    factor: float = 3.0
    """Answers of `category` become this many times longer (before ``max_tokens`` caps them)."""
    prompt_tokens: int = 400
    """Tokens added to every prompt of `tenant` (negative: removed, down to 8)."""
    tenant: str = "support-bot"
    category: str = "chat"
    at: float = 0.5
    """Fraction of the run, by arrival order, where the shock happens."""

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"the shock factor must be > 0, got {self.factor}; try 3.0 or 0.3")
        if not 0 < self.at < 1:
            raise ValueError(f"the shock must happen mid-run (0 < at < 1), got {self.at}")
        if self.category not in CATEGORIES:
            raise ValueError(
                f"unknown shock category {self.category!r}; choose one of {', '.join(CATEGORIES)}"
            )


def apply_shock(workload: Workload, shock: Shock) -> Workload:
    """`workload` with `shock` applied to every request arriving at or after the arrival at index
    ceil(at · n) (`Workload.shock_s`); the drift phases (`Workload.phases`) split there too."""
    items = workload.items
    n = len(items)
    if shock.tenant not in {t.name for t in workload.tenants}:
        raise ValueError(
            f"the shock tenant {shock.tenant!r} is not one of the workload's tenants "
            f"({', '.join(t.name for t in workload.tenants)})"
        )
    first = math.ceil(shock.at * n)
    while 0 < first < n and items[first - 1].arrival_s == items[first].arrival_s:
        first += 1  # one instant: requests arriving together fall on the same side
    if not 0 < first < n:
        raise ValueError(f"need requests on both sides of the shock, got {n} requests")
    out = list(items[:first]) + [_shocked(it, shock) for it in items[first:]]
    phase = (first - 0.5) / n  # `phases` puts index i in phase 1 iff i >= first, free of rounding
    return Workload(workload.name, out, workload.tenants, (phase,), shock_s=items[first].arrival_s,
                    block_tokens=workload.block_tokens)


def _shocked(item: WorkloadItem, shock: Shock) -> WorkloadItem:
    changes: dict[str, Any] = {}
    if item.tenant == shock.tenant:
        changes["prompt_tokens"] = max(8, item.prompt_tokens + shock.prompt_tokens)
    if item.category == shock.category:
        changes["output_tokens"] = int(min(item.max_tokens, max(1, round(item.output_tokens * shock.factor))))
    return replace(item, **changes) if changes else item


def drift_shock_workload(
    num_requests: int,
    seed: int = 0,
    replicas: int = 4,
    load: float = 0.8,
    perf: PerfModel | None = None,
    shock: Shock | None = None,
) -> Workload:
    """The ``drift-shock`` workload: the stationary paper tenants at `load`, then `shock`."""
    base = paper_workload(num_requests, seed=seed, replicas=replicas, load=load, perf=perf, drift=False)
    shocked = apply_shock(base, shock or Shock())
    return replace(shocked, name="drift-shock")


# -- measurement ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Windows:
    """Attainment per window of arrivals, aligned on the shock (window k starts at shock + k·w)."""

    index: np.ndarray
    """k of each window (negative before the shock)."""
    met: np.ndarray
    requests: np.ndarray
    window_s: float

    @property
    def attainment(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(self.met / self.requests, dtype=float)

    def pooled(self, lo_s: float, hi_s: float) -> float:
        """The share met among the requests of the windows starting in [lo_s, hi_s) after the shock."""
        start = self.index * self.window_s
        pick = (start >= lo_s) & (start < hi_s)
        total = self.requests[pick].sum()
        return float(self.met[pick].sum() / total) if total else math.nan


def windows(
    arrival: np.ndarray, met: np.ndarray, shock_s: float, window_s: float, bounds: tuple[float, float]
) -> Windows:
    """Whole windows of `window_s` inside `bounds`, aligned on `shock_s`; met and sent per window."""
    if not window_s > 0:
        raise ValueError(f"the window must be > 0 seconds, got {window_s}")
    lo, hi = bounds
    first = math.ceil((lo - shock_s) / window_s)
    last = math.floor((hi - shock_s) / window_s)  # exclusive: the window starting here ends past hi
    index = np.arange(first, last)
    k = np.floor((arrival - shock_s) / window_s).astype(np.int64)
    inside = (k >= first) & (k < last)
    slot = k[inside] - first
    requests = np.bincount(slot, minlength=index.size)[: index.size].astype(float)
    hits = np.bincount(slot, weights=met[inside].astype(float), minlength=index.size)[: index.size]
    return Windows(index, hits, requests, window_s)


def recovery_s(variant: Windows, oracle: Windows, tolerance: float = 0.02) -> float:
    """Seconds after the shock until `variant` is within `tolerance` of `oracle` in every later window
    (`recovery_time` on their difference)."""
    if not np.array_equal(variant.index, oracle.index):
        raise ValueError("the variant and the oracle must be measured on the same windows")
    return recovery_time(variant.index, variant.attainment - oracle.attainment, variant.window_s, tolerance)


def recovery_time(index: np.ndarray, diff: np.ndarray, window_s: float, tolerance: float = 0.02) -> float:
    """The start (s after the shock) of the earliest post-shock window from which every later window
    has ``diff >= -tolerance`` (`diff`: variant minus oracle attainment, per window `index`).

    0 when no post-shock window misses; inf when the last one does (not recovered within the run).
    A window without requests (NaN) neither misses nor counts.
    """
    after = index >= 0
    miss = np.flatnonzero(diff[after] < -tolerance)  # NaN compares False
    if miss.size == 0:
        return 0.0
    if miss[-1] == int(after.sum()) - 1:
        return math.inf
    return float(index[after][miss[-1] + 1] * window_s)


def misses_before(index: np.ndarray, diff: np.ndarray, tolerance: float = 0.02) -> float:
    """The share of pre-shock windows with ``diff < -tolerance``: how often noise alone looks like a
    miss, the floor under which a recovery time means nothing."""
    before = diff[(index < 0) & ~np.isnan(diff)]
    return float(np.mean(before < -tolerance)) if before.size else math.nan


def gap(variant: Windows, base: Windows, horizon_s: float) -> tuple[float, float]:
    """(points, point·minutes) by which `variant` is above `base` over [shock, shock + horizon).

    Points: pooled attainment difference × 100; area: Σ (variant − base) × 100 · w / 60 per window."""
    points = 100 * (variant.pooled(0, horizon_s) - base.pooled(0, horizon_s))
    start = variant.index * variant.window_s
    pick = (start >= 0) & (start < horizon_s)
    diff = variant.attainment[pick] - base.attainment[pick]
    area = float(np.nansum(diff) * 100 * variant.window_s / 60)
    return points, area


def shock_figures(
    runs: Mapping[str, RunRecords],
    objectives: Mapping[str, Objectives],
    shock_s: float,
    corrected: str,
    oracle: str,
    window_s: float = 60.0,
    horizon_s: float = 300.0,
    tolerance: float = 0.02,
) -> dict[str, Any]:
    """One seed's figures: per variant, windows and pooled attainment, recovery and gap to `corrected`.

    `runs` maps variant names to the records of runs on one workload (same arrivals); `corrected` and
    `oracle` name two of them."""
    steady = steady_window(next(iter(runs.values())))
    bounds = (steady.start_s, steady.end_s)
    per = {}
    for name, rec in runs.items():
        ttft_met, tpot_met = slo_flags(rec, objectives)
        per[name] = windows(rec.arrival, ttft_met & tpot_met, shock_s, window_s, bounds)
    out: dict[str, Any] = {"shock_s": shock_s, "window_s": window_s, "horizon_s": horizon_s, "variants": {}}
    for name, w in per.items():
        points, area = gap(w, per[corrected], horizon_s)
        out["variants"][name] = {
            "before": w.pooled(-math.inf, 0),
            "horizon": w.pooled(0, horizon_s),
            "after_horizon": w.pooled(horizon_s, math.inf),
            "recovery_s": None if name == oracle else recovery_s(w, per[oracle], tolerance),
            "vs_corrected_points": None if name == corrected else points,
            "vs_corrected_area": None if name == corrected else area,
            "windows": {int(k): float(a) for k, a in zip(w.index, w.attainment, strict=True)},
        }
    return out


def combine_seeds(
    per_seed: Sequence[Mapping[str, Any]], oracle: str, tolerance: float = 0.02
) -> dict[str, Any]:
    """`shock_figures` of several seeds: every figure's (median, min, max), and the recovery and
    pre-shock miss share (`misses_before`) of the seed-mean difference curve.

    The seed-mean curve is, per window present in every seed (k from the shock), the mean over seeds
    of variant minus oracle attainment: the per-window noise of one seed shrinks with the seeds."""
    first = per_seed[0]
    window_s = float(first["window_s"])
    out: dict[str, Any] = {"window_s": window_s, "variants": {}}
    for key in ("realised_factor", "load_after", "shock_s"):
        if all(key in s for s in per_seed):
            out[key] = median_spread([float(s[key]) for s in per_seed])
    scalar = ("before", "horizon", "after_horizon", "recovery_s", "vs_corrected_points", "vs_corrected_area")
    for name in first["variants"]:
        rows = [s["variants"][name] for s in per_seed]
        oracles = [s["variants"][oracle]["windows"] for s in per_seed]
        fig: dict[str, Any] = {}
        for key in scalar:
            values = [r[key] for r in rows]
            fig[key] = None if any(v is None for v in values) else median_spread(values)
        common = sorted(set.intersection(*(set(r["windows"]) for r in rows)))
        fig["windows"] = {k: median_spread([r["windows"][k] for r in rows])[0] for k in common}
        if name != oracle:
            index = np.array(common, dtype=np.int64)
            with np.errstate(invalid="ignore"):
                diff = np.array(
                    [
                        np.nanmean([r["windows"][k] - o[k] for r, o in zip(rows, oracles, strict=True)])
                        for k in common
                    ]
                )
            fig["mean_curve_recovery_s"] = recovery_time(index, diff, window_s, tolerance)
            fig["misses_before"] = misses_before(index, diff, tolerance)
        out["variants"][name] = fig
    return out


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max), inf counted as the largest value."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan, math.nan, math.nan
    mid = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return mid, ordered[0], ordered[-1]
