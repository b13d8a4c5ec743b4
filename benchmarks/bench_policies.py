"""Policy sweep on the simulator: median and tail E2E latency, per tenant, over loads and seeds.

Every (workload, load, seed) is built once; each policy variant then runs on it through the same
`Simulation` the `driftsched simulate` command uses (same intake inputs, dispatch and queue deadline).
A variant is a registered policy name, optionally with JSON constructor options:
``'bounded:{"horizon_s": 300}'``. Per seed it prints one line per variant; then, per load, the median
over seeds of every figure, and — when `fifo` and `sjf` are among the variants — how each other
variant stands against the targets of issue 11:

* median: keeps at least 90% of sjf's median gain over fifo (``p50 <= fifo - 0.9 (fifo - sjf)``);
* overall p99 <= fifo's, and <= 0.85x fifo's where sjf's median gain exceeds 50%;
* every tenant's p99 <= fifo's (1.1x at load > 1.05);
* nothing expires on a seed where nothing expires under fifo.

    python benchmarks/bench_policies.py --workload paper --loads 0.8,0.9,1.0,1.1 --seeds 1,2,3 \\
        --policies fifo sjf bounded

Workloads: ``paper`` (the synthetic multi-tenant workload), ``azure`` and ``mooncake`` (public traces
replayed as `driftsched simulate --trace` does, categories from prompt bands), and ``studio`` (this
script's own: other tenants and mixes, see `studio_workload`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driftsched.bench.prompts import intake_fields
from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S, CoreConfig
from driftsched.sim import perf_model, traces
from driftsched.sim.command import DEFAULT_MODEL, DEFAULT_REPLICAS
from driftsched.sim.report import policy_summary
from driftsched.sim.simulator import Simulation, core_config_for
from driftsched.sim.workload import (
    OUTPUT_LENGTH,
    PROMPT_LENGTH,
    TenantSpec,
    Workload,
    WorkloadItem,
    paper_workload,
    scale_to_load,
)

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"  # /work/shared/traces beside the repo
MEDIAN_KEEP = 0.9  # share of sjf's median gain over fifo a policy must keep
TAIL_CUT = 0.85  # overall p99 over fifo's where sjf's median gain exceeds STRONG_GAIN
STRONG_GAIN = 0.5
TENANT_SLACK = {True: 1.1, False: 1.0}  # per-tenant p99 over fifo's, at overload (load > 1.05) or not


# -- workloads ------------------------------------------------------------------------------------

# The studio workload: two interactive tenants and two batch ones, none of the paper's mixes.
# (tenant spec, share, {category: mix}, max_tokens, {category: output length scale})
StudioTenant = tuple[TenantSpec, float, dict[str, float], int, dict[str, float]]
STUDIO: tuple[StudioTenant, ...] = (
    (TenantSpec("chat-app", tier=0, weight=4.0), 0.45, {"chat": 0.8, "qa": 0.2}, 1024, {"chat": 1.3}),
    (TenantSpec("agent", tier=1, weight=2.0), 0.25, {"code": 0.5, "qa": 0.5}, 2048, {"qa": 2.0}),
    (TenantSpec("reports", tier=2, weight=1.0), 0.15, {"longform": 1.0}, 2048, {"longform": 1.4}),
    (TenantSpec("batch-sum", tier=3, weight=1.0), 0.15, {"summarize": 1.0}, 512, {}),
)


def studio_workload(n: int, seed: int, replicas: int, load: float, perf: perf_model.PerfModel) -> Workload:
    """Four tenants with their own mixes; from a third of the run the agent's code answers triple."""
    rng = np.random.default_rng(seed)
    shares = np.array([s[1] for s in STUDIO])
    tenant_of = rng.choice(len(STUDIO), size=n, p=shares / shares.sum())
    arrivals = np.cumsum(rng.exponential(1.0, n))
    items = []
    for i, (t, ti) in enumerate(zip(arrivals.tolist(), tenant_of.tolist(), strict=True)):
        spec, _, mix, cap, scale = STUDIO[ti]
        cat = str(rng.choice(list(mix), p=list(mix.values())))
        base, sigma = OUTPUT_LENGTH[cat]
        drift = 3.0 if spec.name == "agent" and cat == "code" and i > n // 3 else 1.0
        median = base * scale.get(cat, 1.0) * drift
        out = int(min(cap, max(1, round(median * math.exp(sigma * rng.standard_normal())))))
        pm, ps = PROMPT_LENGTH[cat]
        prompt = int(min(8000, max(8, round(pm * math.exp(ps * rng.standard_normal())))))
        items.append(WorkloadItem(t, spec.name, cat, prompt, cap, out))
    items = scale_to_load(items, perf, replicas, load)
    return Workload("studio", items, tuple(s[0] for s in STUDIO), (1 / 3,))


def build(
    workload: str,
    n: int,
    seed: int,
    replicas: int,
    load: float,
    perf: perf_model.PerfModel,
    traces_dir: Path = TRACES,
) -> Workload:
    if workload == "paper":
        return paper_workload(n, seed=seed, replicas=replicas, load=load, perf=perf)
    if workload == "studio":
        return studio_workload(n, seed, replicas, load, perf)
    opts = traces.ReplayOptions(
        seed=seed, limit=n, category="prompt_band", perf=perf, replicas=replicas, load=load
    )
    if workload == "azure":
        return traces.load_azure_conv(traces_dir / "azure2023_conv.csv", opts)
    if workload == "mooncake":
        return traces.load_mooncake(traces_dir / "mooncake_synthetic.jsonl", opts)
    raise SystemExit(f"unknown workload {workload!r}; choose paper, studio, azure or mooncake")


# -- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    workload: str
    load: float
    seed: int
    requests: int
    replicas: int
    model: str
    queue_timeout_s: float
    variants: tuple[str, ...]
    traces_dir: Path
    scheduler: dict[str, Any] = field(default_factory=dict)
    """Scheduler settings over the defaults (`--scheduler`), e.g. {"preemption": {"enabled": true}}."""


def split_variant(variant: str) -> tuple[str, dict[str, Any]]:
    """'name' or 'name:{json options}' -> (name, options); 'module:Class' names stay whole."""
    name, sep, rest = variant.partition(":{")
    return name, (json.loads("{" + rest) if sep else {})


def run_case(case: Case) -> dict[str, dict[str, Any]]:
    """All variants on one (workload, load, seed): variant -> policy_summary."""
    perf = perf_model.PerfModel(perf_model.MODEL_SHAPES[case.model])
    workload = build(case.workload, case.requests, case.seed, case.replicas, case.load, perf, case.traces_dir)
    base = core_config_for(workload, perf)
    intake = [intake_fields(item, workload.block_tokens) for item in workload.items]
    out = {}
    for variant in case.variants:
        name, options = split_variant(variant)
        data = base.model_dump()
        data["scheduler"].update(case.scheduler)
        data["scheduler"]["policy"] = name  # the simulator applies options to the configured policy only
        data["scheduler"]["policy_options"] = options
        config = CoreConfig.model_validate(data)
        started = time.perf_counter()
        sim = Simulation(
            workload, name, perf, case.replicas, config, intake=intake, queue_timeout_s=case.queue_timeout_s
        )
        run = sim.run()
        summary = policy_summary(run)
        summary["wall_s"] = time.perf_counter() - started
        # How long the replicas work on after the last arrival: a drain longer than the queue
        # timeout means the backlog at the end of the overload outlived the deadline under any order.
        summary["drain_s"] = run.sim_time_s - workload.items[-1].arrival_s
        out[variant] = summary
    return out


# -- tables ---------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 1) -> str:
    return "inf" if x is None or math.isinf(x) else f"{x:.{digits}f}"


def pct(summary: dict[str, Any], q: str) -> float:
    value = summary["e2e_s"][q]
    return math.inf if value is None else float(value)


def tenant_pct(summary: dict[str, Any], tenant: str, q: str) -> float:
    value = summary["per_tenant"][tenant]["e2e_s"][q]
    return math.inf if value is None else float(value)


def expired(figures: dict[str, Any]) -> str:
    return f"({int(figures['expired'])})" if figures["expired"] else ""


def line(variant: str, s: dict[str, Any], width: int) -> str:
    tenants = " ".join(
        f"{t[:8]}={fmt(tenant_pct(s, t, 'p50'), 0)}/{fmt(tenant_pct(s, t, 'p99'), 0)}{expired(x)}"
        for t, x in s["per_tenant"].items()
    )
    drain = f" drain {s['drain_s']:4.0f}" if "drain_s" in s else ""
    return (
        f"  {variant:{width}s} p50 {fmt(pct(s, 'p50'), 2):>7} p99 {fmt(pct(s, 'p99')):>7} "
        f"exp {int(s['expired']):4d}{drain} | {tenants}"
    )


def median_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-seed median of each figure the tables use (inf sorts last, as it should)."""

    def med(values: Sequence[float]) -> float:
        return float(statistics.median(values))

    tenants = list(runs[0]["per_tenant"])
    return {
        "e2e_s": {q: med([pct(r, q) for r in runs]) for q in ("p50", "p99")},
        "expired": med([r["expired"] for r in runs]),
        "drain_s": med([r["drain_s"] for r in runs]),
        "per_tenant": {
            t: {
                "e2e_s": {q: med([tenant_pct(r, t, q) for r in runs]) for q in ("p50", "p99")},
                "expired": med([r["per_tenant"][t]["expired"] for r in runs]),
            }
            for t in tenants
        },
    }


def verdict(
    load: float,
    s: dict[str, Any],
    fifo: dict[str, Any],
    sjf: dict[str, Any],
    expiries: Sequence[tuple[int, int]],
) -> str:
    """Which of the issue-11 targets a median summary meets against fifo and sjf (same load).

    `expiries` pairs (this variant's, fifo's) expiry counts seed by seed: expiring anything on a seed
    where fifo expires nothing is a miss, whatever the medians say.
    """
    f50, s50, f99 = pct(fifo, "p50"), pct(sjf, "p50"), pct(fifo, "p99")
    p50, p99 = pct(s, "p50"), pct(s, "p99")
    need50 = f50 - MEDIAN_KEEP * (f50 - s50)
    strong = (f50 - s50) > STRONG_GAIN * f50
    need99 = f99 * (TAIL_CUT if strong else 1.0)
    slack = TENANT_SLACK[load > 1.05]
    worse = [t for t in s["per_tenant"] if tenant_pct(s, t, "p99") > slack * tenant_pct(fifo, t, "p99")]
    marks = [
        f"p50 {fmt(p50, 2)}<={fmt(need50, 2)} {'ok' if p50 <= need50 else 'MISS'}",
        f"p99 {fmt(p99)}<={fmt(need99)} {'ok' if p99 <= need99 else 'MISS'}",
        f"tenant p99 {'ok' if not worse else 'MISS ' + ','.join(t[:8] for t in worse)}",
        f"expiry {'ok' if all(mine == 0 or theirs > 0 for mine, theirs in expiries) else 'MISS'}",
    ]
    return "; ".join(marks)


def over(a: float, b: float) -> float:
    """a / b, NaN where fifo's figure is itself inf (no ratio to speak of)."""
    return math.nan if math.isinf(b) else a / b


def per_seed(variant: str, runs: Sequence[dict[str, dict[str, Any]]]) -> str:
    """Seed by seed, over fifo: overall p99 and the worst tenant's p99 (medians hide a bad seed)."""
    overall, worst = [], []
    for r in runs:
        mine, fifo = r[variant], r["fifo"]
        overall.append(over(pct(mine, "p99"), pct(fifo, "p99")))
        tenants = [over(tenant_pct(mine, t, "p99"), tenant_pct(fifo, t, "p99")) for t in fifo["per_tenant"]]
        worst.append(max((x for x in tenants if not math.isnan(x)), default=math.nan))
    return (
        f"per seed, over fifo: p99 {' '.join(f'{x:.2f}' for x in overall)}; "
        f"worst tenant p99 {' '.join(f'{x:.2f}' for x in worst)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="paper", choices=("paper", "studio", "azure", "mooncake"))
    ap.add_argument("--loads", default="0.8,0.9,1.0,1.1", help="comma-separated offered loads")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS)
    ap.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(perf_model.MODEL_SHAPES))
    ap.add_argument("--queue-timeout", type=float, default=DEFAULT_QUEUE_TIMEOUT_S)
    ap.add_argument("--traces", type=Path, default=TRACES, help="folder holding the public traces")
    ap.add_argument(
        "--policies",
        nargs="+",
        default=["fifo", "sjf", "bounded"],
        help="variants: NAME or 'NAME:{json options}'",
    )
    ap.add_argument(
        "--scheduler",
        type=json.loads,
        default={},
        help="JSON scheduler settings over the defaults (the simulator's defaults leave preemption off), "
        'e.g. \'{"kv_growth_tokens": 32, "preemption": {"enabled": true}}\'',
    )
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one per load and seed)")
    ap.add_argument("--json", type=Path, help="also write every per-seed summary here")
    args = ap.parse_args(argv)

    loads = [float(x) for x in args.loads.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    cases = [
        Case(
            args.workload,
            load,
            seed,
            args.requests,
            args.replicas,
            args.model,
            args.queue_timeout,
            tuple(args.policies),
            args.traces,
            args.scheduler,
        )
        for load in loads
        for seed in seeds
    ]
    width = max(len(v) for v in args.policies)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_case, cases))
    else:
        results = [run_case(c) for c in cases]
    by_load: dict[float, list[dict[str, dict[str, Any]]]] = {}
    for case, result in zip(cases, results, strict=True):
        print(f"{args.workload} load {case.load} seed {case.seed}")
        for variant, summary in result.items():
            print(line(variant, summary, width))
        by_load.setdefault(case.load, []).append(result)
    for load, runs in by_load.items():
        print(f"\n{args.workload} load {load}: median of seeds {','.join(map(str, seeds))}")
        medians = {v: median_summary([r[v] for r in runs]) for v in args.policies}
        for variant, summary in medians.items():
            print(line(variant, summary, width))
        if "fifo" in medians and "sjf" in medians:
            for variant, summary in medians.items():
                if variant not in ("fifo", "sjf"):
                    expiries = [(r[variant]["expired"], r["fifo"]["expired"]) for r in runs]
                    judged = verdict(load, summary, medians["fifo"], medians["sjf"], expiries)
                    print(f"  {variant:{width}s} {judged}")
                    print(f"  {'':{width}s} {per_seed(variant, runs)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                [{"load": c.load, "seed": c.seed, "results": r} for c, r in zip(cases, results, strict=True)],
                default=float,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
