"""Results of runs, simulated or live: summary.json, the per-request CSV, the printed table and the plots.

Every figure here is computed from the per-request records of the runs (`RunRecords`; a simulator
`RunResult` is converted on the way in); the true output lengths are read only now, after the fact, to
score the estimates. A live run may carry the service's own estimation errors instead.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from driftsched.core.slo import Objectives
from driftsched.sim.attainment import (
    OUTCOMES,
    STEADY_WINDOW,
    Window,
    e2e_flags,
    in_window,
    is_expired,
    outcomes,
    slo_flags,
    steady_window,
)
from driftsched.sim.records import RunRecords, as_records
from driftsched.sim.seeds import REFERENCE, format_versus, versus
from driftsched.sim.simulator import ORACLE, REFERENCES, UNCORRECTED, RunResult

Run = RunResult | RunRecords


def _pct(values: np.ndarray, *qs: int) -> dict[str, float]:
    if values.size == 0:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def _censored_pct(values: np.ndarray, failed: int, *qs: int) -> dict[str, float]:
    """Percentiles of latencies where `failed` more requests never got there: they count as infinite.

    So a policy cannot look faster by letting its slowest requests expire: if more than 1% of them
    failed, its p99 is inf (written as null in JSON).
    """
    if values.size + failed == 0:
        return {f"p{q}": float("nan") for q in qs}
    ordered = np.sort(values)
    total = ordered.size + failed
    out = {}
    for q in qs:
        rank = q / 100 * (total - 1)
        lo, hi = math.floor(rank), math.ceil(rank)
        if hi >= ordered.size:
            out[f"p{q}"] = float("inf")
        else:
            out[f"p{q}"] = float(ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo))
    return out


def _arrays(rec: RunRecords) -> dict[str, np.ndarray]:
    arrival = rec.arrival
    ended = outcomes(rec)
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = rec.output_tokens - 1
        tpot = (rec.finish - rec.first_token) / np.where(gaps > 0, gaps, np.nan)
    return {
        "arrival": arrival,
        "tenant": rec.tenant,
        "true": rec.output_tokens,
        "done": ~np.isnan(rec.finish),
        "outcome": ended,
        "expired": ended == "expired",
        # entered a queue: completed, expired there, or failed after admission (not refused at the door)
        "entered": (ended == "completed") | (ended == "expired") | (ended == "error"),
        "e2e": rec.finish - arrival,
        "ttft": rec.first_token - arrival,
        "tpot": tpot,
        "wait": rec.dispatch - arrival,
    }


def estimator_errors(run: Run) -> dict[str, dict[str, float]]:
    """MAE and RMSE of raw and corrected estimates against true lengths, over admitted requests.

    A run that carries the service's own figures (live) reports those.
    """
    rec = as_records(run)
    if rec.estimator is not None:
        return rec.estimator
    ok = rec.admitted & ~np.isnan(rec.output_tokens)
    out = {}
    for name, est in (("uncorrected", rec.raw_estimate), ("corrected", rec.corrected_estimate)):
        err = est[ok] - rec.output_tokens[ok]
        out[name] = {
            "mae": float(np.mean(np.abs(err))) if err.size else float("nan"),
            "rmse": float(np.sqrt(np.mean(err * err))) if err.size else float("nan"),
        }
    return out


def group_oracle_errors(run: Run, phase: Sequence[int]) -> dict[str, float]:
    """MAE and RMSE of an estimator that knows each (tenant, category, phase) group's true mean output.

    The ceiling for an estimator whose features are the tenant and the category (the one the service
    used) in a stationary phase: only within-group variation is left. Scored on the admitted requests.
    """
    rec = as_records(run)
    ok = rec.admitted & ~np.isnan(rec.output_tokens)
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i in np.flatnonzero(ok).tolist():
        groups.setdefault((str(rec.tenant[i]), rec.category[i], phase[i]), []).append(i)
    err = np.concatenate(
        [rec.output_tokens[idx] - rec.output_tokens[idx].mean() for idx in map(np.array, groups.values())]
    ) if groups else np.zeros(0)
    return {
        "mae": float(np.mean(np.abs(err))) if err.size else float("nan"),
        "rmse": float(np.sqrt(np.mean(err * err))) if err.size else float("nan"),
    }


def run_span_s(rec: RunRecords) -> float:
    """Seconds from the first arrival to the last arrival or finish (the run's makespan)."""
    events = np.concatenate([rec.arrival, rec.finish])
    events = events[~np.isnan(events)]
    return float(events.max() - np.nanmin(rec.arrival)) if rec.arrival.size and events.size else 0.0


@dataclass(frozen=True, slots=True)
class _Judged:
    """Per-request SLO judgement of one run (`attainment.slo_flags`, `attainment.e2e_flags`)."""

    ttft: np.ndarray
    tpot: np.ndarray
    e2e_judged: np.ndarray
    e2e_met: np.ndarray


def _figures(
    rec: RunRecords, a: dict[str, np.ndarray], mask: np.ndarray, window: Window, judged: _Judged | None
) -> dict[str, Any]:
    """The figures of the requests in `mask` (all in the window; a run's, or one tenant's of it).

    Shares are of the requests sent (`attainment.OUTCOMES`). Latency percentiles count the requests
    that entered a queue: one that never finished (expired, failed) is infinitely late for E2E, and one
    that never got a first token for TTFT (`_censored_pct`); a request refused at the door is in the
    shares, not the latencies. TPOT is over completed requests of more than one token. SLO attainment is
    over the requests sent less those *rejected* for the tenant's own doing (bad input, over its quota
    or queue cap): a shed, expired or failed one misses; goodput counts those that met both objectives, per
    second of the window's length.
    """
    n = int(mask.sum())
    nan = float("nan")
    ended = a["outcome"][mask]
    done = a["done"] & mask
    entered = a["entered"] & mask
    started = entered & ~np.isnan(a["ttft"])
    out: dict[str, Any] = {"requests": n}
    for name in OUTCOMES:
        out[f"{name}_share"] = float((ended == name).sum() / n) if n else nan
    out["e2e_s"] = {
        **_censored_pct(a["e2e"][done], int((entered & ~done).sum()), 50, 90, 99),
        "mean": float(a["e2e"][done].mean()) if done.any() else nan,
    }
    out["ttft_s"] = _censored_pct(a["ttft"][started], int((entered & ~started).sum()), 50, 90, 99)
    out["tpot_s"] = _pct(a["tpot"][done & ~np.isnan(a["tpot"])], 50, 99)
    if judged is not None:
        both = judged.ttft & judged.tpot & mask
        k = int((mask & (a["outcome"] != "rejected")).sum())  # a tenant's own refusals are not judged
        out["slo"] = {
            "ttft": float((judged.ttft & mask).sum() / k) if k else nan,
            "tpot": float((judged.tpot & mask).sum() / k) if k else nan,
            "both": float(both.sum() / k) if k else nan,
        }
        e2e = judged.e2e_judged & mask
        if e2e.any():  # the optional end-to-end objective (latency_slo_s), over the tenants that have one
            out["slo"]["e2e"] = float((judged.e2e_met & e2e).sum() / e2e.sum())
        length = window.length_s
        out["goodput"] = {
            "requests_per_s": float(both.sum() / length) if length > 0 else nan,
            "tokens_per_s": float(np.nansum(rec.output_tokens[both]) / length) if length > 0 else nan,
        }
    return out


def _counts(a: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, int]:
    """How the requests in `mask` ended, over the whole run (not only the window): ``failed`` is those
    that entered a queue and never finished (expired, or an error after admission)."""
    ended = a["outcome"][mask]
    counts = {name: int((ended == name).sum()) for name in ("completed", "rejected", "shed", "expired")}
    counts["failed"] = int((a["entered"] & ~a["done"] & mask).sum())
    return counts


def policy_summary(
    run: Run,
    objectives: Mapping[str, Objectives] | None = None,
    window: tuple[float, float] | None = STEADY_WINDOW,
) -> dict[str, Any]:
    """One run's summary: figures overall and per tenant over the steady window, counts, run facts.

    `window` gives the steady window as shares of the arrival span (`attainment.steady_window`; None:
    every request); every share, latency percentile, attainment and goodput is over the requests that
    arrived in it, followed to completion (`_figures`), and ``window`` states it. The counts
    (``completed``, ``rejected``, ``shed``, ``expired``, ``failed``) are of the whole run.
    `objectives` (tenant -> `Objectives`, e.g. `CoreConfig.objectives()`) adds ``slo`` and ``goodput``.
    """
    rec = as_records(run)
    a = _arrays(rec)
    win = steady_window(rec, window)
    inside = in_window(rec, win)
    judged = None
    if objectives is not None:
        ttft, tpot = slo_flags(rec, objectives)
        e2e_judged, e2e_met = e2e_flags(rec, objectives)
        judged = _Judged(ttft, tpot, e2e_judged, e2e_met)
    per_tenant = {}
    for tenant in dict.fromkeys(a["tenant"].tolist()):
        mine = a["tenant"] == tenant
        per_tenant[tenant] = {**_counts(a, mine), **_figures(rec, a, mine & inside, win, judged)}
    wait_done = a["done"] & inside
    return {
        "window": {"start_s": win.start_s, "end_s": win.end_s, "requests": int(inside.sum())},
        **_figures(rec, a, inside, win, judged),
        "queue_wait_s": _pct(a["wait"][wait_done], 50, 99),
        **_counts(a, np.ones(len(rec), dtype=bool)),
        "span_s": run_span_s(rec),
        "per_tenant": per_tenant,
        "estimator": estimator_errors(rec),
        **rec.extras,
    }


def _over(a: float, b: float) -> float:
    """a / b as a ratio: NaN when undefined (0 or inf over inf), inf when only `a` is inf."""
    if b == 0 or (math.isinf(a) and math.isinf(b)):
        return float("nan")
    return a / b


def comparisons(policies: dict[str, dict[str, Any]], estimator: dict[str, Any]) -> dict[str, Any]:
    """The paper's comparisons as ratios (reductions are positive when better)."""
    out: dict[str, Any] = {}
    unc, cor = estimator["uncorrected"], estimator["corrected"]
    out["correction_mae_reduction"] = 1 - cor["mae"] / unc["mae"] if unc["mae"] else None
    out["correction_rmse_reduction"] = 1 - cor["rmse"] / unc["rmse"] if unc["rmse"] else None
    oracle = estimator.get("group_oracle")
    if oracle:
        out["corrected_mae_over_group_oracle"] = _over(cor["mae"], oracle["mae"])
        out["corrected_rmse_over_group_oracle"] = _over(cor["rmse"], oracle["rmse"])
    fifo, sjf = policies.get("fifo"), policies.get("sjf")
    for name, other in (("fifo", fifo), ("uncorrected", policies.get(UNCORRECTED))):
        if sjf and other:
            for q in ("p50", "p99"):
                out[f"sjf_vs_{name}_{q}_reduction"] = 1 - _over(sjf["e2e_s"][q], other["e2e_s"][q])
    if sjf and ORACLE in policies:
        out["sjf_p50_over_oracle"] = _over(sjf["e2e_s"]["p50"], policies[ORACLE]["e2e_s"]["p50"]) - 1
    if fifo and "aging" in policies:
        aging = policies["aging"]["per_tenant"]
        out["aging_vs_fifo_tenant_p99_ratio"] = {
            t: _over(aging[t]["e2e_s"]["p99"], v["e2e_s"]["p99"]) for t, v in fifo["per_tenant"].items()
        }
    return out


def summarize(
    results: Sequence[Run],
    meta: dict[str, Any],
    phase: Sequence[int] | None = None,
    objectives: Mapping[str, Objectives] | None = None,
    window: tuple[float, float] | None = STEADY_WINDOW,
) -> dict[str, Any]:
    """The summary.json document; `phase` (drift phase per request) adds the group oracle;
    `objectives` (tenant -> `Objectives`) adds SLO attainment and goodput, stated under ``objectives``.

    ``window`` states the steady window (shares of the arrival span and, from the first run, its
    seconds and requests); ``vs_fifo`` compares each policy with FIFO (`seeds.versus`: one seed gives
    the ratios without an interval)."""
    runs = [as_records(r) for r in results]
    policies = {run.policy: policy_summary(run, objectives, window) for run in runs}
    named = [r for r in runs if r.policy not in REFERENCES]
    source = next((r for r in named if r.policy == "sjf"), named[0] if named else runs[0])
    estimator: dict[str, Any] = dict(estimator_errors(source))
    if phase is not None and source.estimator is None:
        estimator["group_oracle"] = group_oracle_errors(source, phase)
    lo, hi = window if window is not None else (0.0, 1.0)
    first = next(iter(policies.values()))["window"] if policies else {}
    summary = {
        **meta,
        "window": {"from_share": lo, "to_share": hi, **first},
        **({"objectives": objectives_doc(objectives)} if objectives is not None else {}),
        "estimator": {**estimator, "from_policy": source.policy},
        "policies": policies,
        "comparisons": comparisons(policies, estimator),
    }
    if REFERENCE in policies:
        summary["vs_fifo"] = versus([summary], REFERENCE)
    return summary


def objectives_doc(objectives: Mapping[str, Objectives]) -> dict[str, dict[str, float]]:
    """Each tenant's objectives as summary.json states them (seconds; ``e2e_s`` where it has one)."""
    return {
        t: {"ttft_s": o.ttft_s, "tpot_s": o.tpot_s, **({"e2e_s": o.e2e_s} if o.e2e_s is not None else {})}
        for t, o in objectives.items()
    }


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary: per policy, a row over all requests and one per tenant."""
    lines = []
    est = summary["estimator"]
    unc, cor = est["uncorrected"], est["corrected"]
    lines.append(
        f"estimator (from {est['from_policy']}): MAE {_num(unc['mae'], 1)} -> {_num(cor['mae'], 1)}, "
        f"RMSE {_num(unc['rmse'], 1)} -> {_num(cor['rmse'], 1)}"
    )
    oracle = est.get("group_oracle")
    if oracle:
        lines.append(
            f"group oracle (true mean per tenant, category, phase): MAE {_num(oracle['mae'], 1)}, "
            f"RMSE {_num(oracle['rmse'], 1)}"
        )
    lines.append(window_line(summary))
    columns = (
        ("ttft%", 7), ("tpot%", 7), ("both%", 7), ("gp tok/s", 9), ("gp req/s", 9), ("ttft50", 8),
        ("ttft99", 8), ("e2e50", 8), ("e2e99", 8), ("rej%", 6), ("shed%", 6), ("exp%", 6),
    )
    head = f"{'policy':<16}{'tenant':<16}" + "".join(f"{c:>{w}}" for c, w in columns)
    head += f"{'util':>6}{'tok/s':>8}"
    lines += [head, "-" * len(head)]
    for name, p in summary["policies"].items():
        util, rate = p.get("utilisation"), p.get("output_tokens_per_s")
        lines.append(f"{name:<16}{'all':<16}{_row(p)}{_num(util, 2):>6}{_num(rate, 0):>8}")
        for tenant, t in p["per_tenant"].items():
            lines.append(f"{'':<16}{tenant[:15]:<16}{_row(t)}")
    lines.append(
        "(attainment and shares in %; gp: goodput, the requests and tokens that met both objectives; "
        "latencies in s, an expired or failed request infinitely late: inf)"
    )
    lines.append("")
    for key, value in summary["comparisons"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:+.3f}"
        lines.append(f"{key}: {value}")
    if summary.get("vs_fifo"):
        lines += ["", format_versus(summary["vs_fifo"])]
    return "\n".join(lines)


def window_line(summary: dict[str, Any]) -> str:
    """What the figures are over: the steady window, and each tenant's objectives."""
    w = summary.get("window") or {}
    text = (
        f"steady window: arrivals from {100 * w.get('from_share', 0):.0f}% to "
        f"{100 * w.get('to_share', 1):.0f}% "
        f"of the arrival span ({_num(w.get('start_s'), 1)}-{_num(w.get('end_s'), 1)} s, "
        f"{_num(w.get('requests'), 0)} requests), each followed to completion"
    )
    objectives = summary.get("objectives")
    if objectives:
        text += "; objectives TTFT / TPOT: " + ", ".join(
            f"{t} {_num(o['ttft_s'], 3)} s / {_num(o['tpot_s'], 3)} s" for t, o in objectives.items()
        )
    return text


def _row(p: dict[str, Any]) -> str:
    slo, goodput = p.get("slo") or {}, p.get("goodput") or {}
    cells = [
        (_pc(slo.get("ttft")), 7), (_pc(slo.get("tpot")), 7), (_pc(slo.get("both")), 7),
        (_num(goodput.get("tokens_per_s"), 0), 9), (_num(goodput.get("requests_per_s"), 2), 9),
        (_num(p["ttft_s"]["p50"], 2), 8), (_num(p["ttft_s"]["p99"], 2), 8),
        (_num(p["e2e_s"]["p50"], 2), 8), (_num(p["e2e_s"]["p99"], 2), 8),
        (_pc(p.get("rejected_share")), 6), (_pc(p.get("shed_share")), 6), (_pc(p.get("expired_share")), 6),
    ]
    return "".join(f"{c:>{w}}" for c, w in cells)


def _pc(value: float | None) -> str:
    return _num(None if value is None else 100 * value, 1)


def _cell(value: float, digits: int) -> str:
    """A CSV number: integers as such when `digits` is 0; NaN as "nan" either way."""
    if digits == 0 and not math.isnan(value):
        return str(int(value))
    return f"{value:.{digits}f}"


def write_requests_csv(runs: Sequence[Run], path: Path) -> None:
    """One row per (policy, request); ``cached_tokens`` (prompt tokens found in the prefix cache) and
    ``replica`` (where it ran) are empty where the run does not know them (a live client)."""
    columns = (
        ("arrival_s", "arrival", 4),
        ("dispatch_s", "dispatch", 4),
        ("first_token_s", "first_token", 4),
        ("finish_s", "finish", 4),
        ("prompt_tokens", "prompt_tokens", 0),
        ("max_tokens", "max_tokens", 0),
        ("output_tokens", "output_tokens", 0),
        ("raw_estimate", "raw_estimate", 1),
        ("corrected_estimate", "corrected_estimate", 1),
    )
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "request", "tenant", "category", *(c for c, _, _ in columns), "cached_tokens",
                    "replica", "status"])
        for rec in map(as_records, runs):
            arrays = [(getattr(rec, attr), digits) for _, attr, digits in columns]
            cached, replica = rec.cached_tokens, rec.replica
            for i in range(len(rec)):
                cells = [_cell(float(values[i]), digits) for values, digits in arrays]
                hit = "" if cached is None or math.isnan(cached[i]) else str(int(cached[i]))
                where = "" if replica is None or replica[i] < 0 else str(int(replica[i]))
                w.writerow([rec.policy, i, rec.tenant[i], rec.category[i], *cells, hit, where, rec.status[i]])


def write_plots(results: Sequence[Run], summary: dict[str, Any], out: Path) -> list[Path]:
    """Latency CDFs, per-tenant p50/p99 bars, and estimate error over time."""
    runs = [as_records(r) for r in results]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        a = _arrays(run)
        e2e = np.sort(a["e2e"][a["done"]])
        if e2e.size:
            ax.plot(
                e2e,
                np.arange(1, e2e.size + 1) / e2e.size,
                label=run.policy,
                linestyle="--" if run.policy in REFERENCES else "-",
            )
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("E2E latency CDF per policy")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(out / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    policies = summary["policies"]
    tenants = list(next(iter(policies.values()))["per_tenant"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    width = 0.8 / max(1, len(policies))
    for ax, q in zip(axes, ("p50", "p99"), strict=True):
        for k, (name, p) in enumerate(policies.items()):
            xs = np.arange(len(tenants)) + k * width
            ax.bar(xs, [p["per_tenant"][t]["e2e_s"][q] for t in tenants], width, label=name)
        ax.set_xticks(np.arange(len(tenants)) + width * (len(policies) - 1) / 2, tenants, rotation=15)
        ax.set_ylabel(f"E2E {q} (s)")
        ax.set_title(f"per-tenant E2E {q}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    paths.append(out / "per_tenant_latency.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    source = next((r for r in runs if r.policy == summary["estimator"]["from_policy"]), runs[0])
    a = _arrays(source)
    ok = source.admitted & ~np.isnan(a["true"])
    t = a["arrival"][ok]
    window = max(1, min(500, t.size // 50))
    kernel = np.ones(window) / window
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, est in (("uncorrected", source.raw_estimate), ("corrected", source.corrected_estimate)):
        err = np.abs(est[ok] - a["true"][ok])
        if err.size >= window and not np.isnan(err).any():
            ax.plot(t[window - 1 :], np.convolve(err, kernel, mode="valid"), label=name)
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel(f"absolute error, rolling mean of {window} (tokens)")
    ax.set_title(f"output-length estimate error over time ({source.policy})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a live run without estimate headers has no curve
        ax.legend()
    paths.append(out / "estimate_error.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def _json_safe(value: Any) -> Any:
    """NaN (a request that never got that far) and inf (a percentile on requests that never finished)
    become null, as JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_summary(summary: dict[str, Any], out: Path, name: str = "summary.json") -> None:
    """summary.json (or `name`) under `out` (NaN written as null)."""
    (out / name).write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")


def write_results(
    results: Sequence[Run],
    meta: dict[str, Any],
    out: Path,
    plots: bool = True,
    phase: Sequence[int] | None = None,
    objectives: Mapping[str, Objectives] | None = None,
) -> dict[str, Any]:
    """Write summary.json, requests.csv and the plots under `out`; returns the summary (`summarize`)."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [as_records(r) for r in results]
    summary = summarize(runs, meta, phase, objectives)
    write_summary(summary, out)
    write_requests_csv(runs, out / "requests.csv")
    if plots:
        write_plots(runs, summary, out)
    return summary


def _num(value: float | None, digits: int) -> str:
    """A figure for the table; "n/a" where the run cannot know it (None or NaN); "inf" for inf."""
    if value is None or value != value:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


__all__ = [
    "ORACLE",
    "UNCORRECTED",
    "RunRecords",
    "format_table",
    "is_expired",
    "objectives_doc",
    "policy_summary",
    "summarize",
    "window_line",
    "write_results",
    "write_summary",
]
