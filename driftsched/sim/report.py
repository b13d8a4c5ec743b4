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
from pathlib import Path
from typing import Any

import numpy as np

from driftsched.sim.records import RunRecords, as_records
from driftsched.sim.simulator import ORACLE, REFERENCES, UNCORRECTED, RunResult

Run = RunResult | RunRecords


def _pct(values: np.ndarray, *qs: int) -> dict[str, float]:
    if values.size == 0:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def is_expired(status: str) -> bool:
    """A request admitted to a queue that left it at its deadline (the simulator's "expired", a live 504)."""
    return status == "expired" or status.startswith("http_504")


def _censored_pct(values: np.ndarray, failed: int, *qs: int) -> dict[str, float]:
    """Percentiles of latencies where `failed` more requests never finished: they count as infinite.

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
    return {
        "arrival": arrival,
        "tenant": rec.tenant,
        "true": rec.output_tokens,
        "done": ~np.isnan(rec.finish),
        "expired": np.array([is_expired(s) for s in rec.status], dtype=bool),
        "e2e": rec.finish - arrival,
        "ttft": rec.first_token - arrival,
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
    """Seconds from the first arrival to the last arrival or finish: the window goodput is over.

    The same for every policy on one workload up to its drain, so goodputs compare as rates.
    """
    events = np.concatenate([rec.arrival, rec.finish])
    events = events[~np.isnan(events)]
    return float(events.max() - np.nanmin(rec.arrival)) if rec.arrival.size and events.size else 0.0


def _outcome_figures(
    rec: RunRecords, a: dict[str, np.ndarray], mask: np.ndarray, span_s: float,
    objectives: Mapping[str, float],
) -> dict[str, Any]:
    """Shares, goodput, TTFT and SLO attainment of the requests in `mask` (all of a run's, or a tenant's).

    Of the n requests sent: ``completed``, ``shed`` (refused at admission: quota, queue limits, size; a
    live run's answers other than 200 and 504) and ``expired`` (left their queue at its deadline; a live
    504) as shares of n. Goodput counts completed requests only: output tokens / span and requests /
    span (`run_span_s`). TTFT is over completed requests. SLO attainment, present when a tenant in
    `mask` has an objective o_t (``latency_slo_s``), is over those tenants' requests:
    ``#{completed, e2e <= o_t} / n_t``, so a shed or expired request is a miss. `a` is `_arrays(rec)`.
    """
    n = int(mask.sum())
    done = a["done"] & mask
    expired = a["expired"] & mask
    shed = ~rec.admitted & ~a["expired"] & mask
    nan = float("nan")
    out: dict[str, Any] = {
        "requests": n,
        "completed_share": done.sum() / n if n else nan,
        "shed_share": shed.sum() / n if n else nan,
        "expired_share": expired.sum() / n if n else nan,
        "goodput_tokens_per_s": np.nansum(rec.output_tokens[done]) / span_s if span_s else nan,
        "goodput_requests_per_s": done.sum() / span_s if span_s else nan,
        "ttft_s": _pct(a["ttft"][done], 50, 99),
    }
    objective = np.array([objectives.get(str(t), np.nan) for t in a["tenant"]], dtype=float)
    judged = mask & ~np.isnan(objective)
    if judged.any():
        met = judged & a["done"] & (a["e2e"] <= objective)
        out["slo_attainment"] = float(met.sum() / judged.sum())
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in out.items()}


def policy_summary(run: Run, objectives: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Latency percentiles overall and per tenant, outcome shares and goodput, counts, and run facts.

    E2E percentiles count every request that entered a queue: one that never finished (expired at its
    queue deadline, or failed after admission) is infinitely late. The mean, TTFT and wait are over
    completed requests. `rejected` counts requests refused at admission (quotas, caps, bad input).
    `objectives` maps tenants to their end-to-end objective in seconds (`_outcome_figures`).
    """
    rec = as_records(run)
    objectives = {t: float(o) for t, o in (objectives or {}).items() if o is not None}
    span = run_span_s(rec)
    a = _arrays(rec)
    done, expired = a["done"], a["expired"]
    failed = (rec.admitted | expired) & ~done
    e2e = a["e2e"][done]
    per_tenant = {}
    for tenant in dict.fromkeys(a["tenant"].tolist()):
        mine = a["tenant"] == tenant
        mask = done & mine
        per_tenant[tenant] = {
            "e2e_s": _censored_pct(a["e2e"][mask], int((failed & mine).sum()), 50, 99),
            "completed": int(mask.sum()),
            "expired": int((expired & mine).sum()),
            "rejected": int((~rec.admitted & ~expired & mine).sum()),
            **_outcome_figures(rec, a, mine, span, objectives),
        }
    overall = _outcome_figures(rec, a, np.ones(len(rec), dtype=bool), span, objectives)
    return {
        "outcomes": {k: v for k, v in overall.items() if k != "ttft_s"},
        "span_s": span,
        "e2e_s": {
            **_censored_pct(e2e, int(failed.sum()), 50, 90, 99),
            "mean": float(e2e.mean()) if e2e.size else float("nan"),
        },
        "ttft_s": _pct(a["ttft"][done], 50, 99),
        "queue_wait_s": _pct(a["wait"][done], 50, 99),
        "completed": int(done.sum()),
        "expired": int(expired.sum()),
        "failed": int(failed.sum()),
        "rejected": int((~rec.admitted & ~expired).sum()),
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
    objectives: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """The summary.json document; `phase` (drift phase per request) adds the group oracle;
    `objectives` (tenant -> end-to-end objective, s) adds SLO attainment."""
    runs = [as_records(r) for r in results]
    slo = {t: float(o) for t, o in (objectives or {}).items() if o is not None}
    policies = {run.policy: policy_summary(run, slo) for run in runs}
    named = [r for r in runs if r.policy not in REFERENCES]
    source = next((r for r in named if r.policy == "sjf"), named[0] if named else runs[0])
    estimator: dict[str, Any] = dict(estimator_errors(source))
    if phase is not None and source.estimator is None:
        estimator["group_oracle"] = group_oracle_errors(source, phase)
    return {
        **meta,
        **({"latency_slo_s": slo} if slo else {}),
        "estimator": {**estimator, "from_policy": source.policy},
        "policies": policies,
        "comparisons": comparisons(policies, estimator),
    }


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary."""
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
    columns = ("p50", "p90", "p99", "mean", "ttft50", "wait50")
    head = (
        f"{'policy':<16}" + "".join(f"{c:>9}" for c in columns)
        + f"{'done':>8}{'expired':>8}{'rej':>6}{'util':>6}{'tok/s':>8}"
    )
    lines += [head, "-" * len(head)]
    for name, p in summary["policies"].items():
        e = p["e2e_s"]
        util, rate = p.get("utilisation"), p.get("output_tokens_per_s")
        lines.append(
            f"{name:<16}{_num(e['p50'], 2):>9}{_num(e['p90'], 2):>9}{_num(e['p99'], 2):>9}"
            f"{_num(e['mean'], 2):>9}{_num(p['ttft_s']['p50'], 2):>9}{_num(p['queue_wait_s']['p50'], 2):>9}"
            f"{_num(p['completed'], 0):>8}{_num(p.get('expired', 0), 0):>8}{_num(p['rejected'], 0):>6}"
            f"{_num(util, 2):>6}{_num(rate, 0):>8}"
        )
    lines.append("(E2E percentiles count an expired or failed request as infinitely late: inf)")
    tenants = list(next(iter(summary["policies"].values()))["per_tenant"])
    lines.append("")
    lines.append("per-tenant E2E p50 / p99 (s), expired")
    lines.append(f"{'policy':<16}" + "".join(f"{t[:22]:>26}" for t in tenants))
    for name, p in summary["policies"].items():
        rows = [p["per_tenant"][t] for t in tenants]
        cells = "".join(
            f"{_num(r['e2e_s']['p50'], 1):>9} /{_num(r['e2e_s']['p99'], 1):>8}"
            f"{_num(r.get('expired', 0), 0):>7} "
            for r in rows
        )
        lines.append(f"{name:<16}{cells}")
    lines.append("")
    for key, value in summary["comparisons"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:+.3f}"
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _cell(value: float, digits: int) -> str:
    """A CSV number: integers as such when `digits` is 0; NaN as "nan" either way."""
    if digits == 0 and not math.isnan(value):
        return str(int(value))
    return f"{value:.{digits}f}"


def write_requests_csv(runs: Sequence[Run], path: Path) -> None:
    """One row per (policy, request)."""
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
        w.writerow(["policy", "request", "tenant", "category", *(c for c, _, _ in columns), "status"])
        for rec in map(as_records, runs):
            arrays = [(getattr(rec, attr), digits) for _, attr, digits in columns]
            for i in range(len(rec)):
                cells = [_cell(float(values[i]), digits) for values, digits in arrays]
                w.writerow([rec.policy, i, rec.tenant[i], rec.category[i], *cells, rec.status[i]])


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


def write_summary(summary: dict[str, Any], out: Path) -> None:
    """summary.json under `out` (NaN written as null)."""
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")


def write_results(
    results: Sequence[Run],
    meta: dict[str, Any],
    out: Path,
    plots: bool = True,
    phase: Sequence[int] | None = None,
    objectives: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """Write summary.json, requests.csv and the plots under `out`; returns the summary."""
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
    "summarize",
    "write_results",
    "write_summary",
]
