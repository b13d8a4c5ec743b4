"""Drift shock in the simulator: SLO attainment per window around the shock, on three estimates.

    python benchmarks/bench_drift_shock.py --policy sjf --seeds 5 --shock-factor 3.0 0.3 \\
        --results-md docs/results/drift-shock.md

For each seed, the stationary paper tenants are generated once at `--load`, and each shock factor is
applied to them (`driftsched.sim.shock`: the same run as ``driftsched simulate --workload drift-shock
--shock-factor F``). One policy then runs on three estimates, ``<policy>`` (drift-corrected),
``<policy>-uncorrected`` and ``<policy>-oracle``, each with a fresh scheduler and engines. The report
gives, per shock factor, the attainment (TTFT and TPOT both met) before the shock, over the first
`--horizon` seconds after it and after that, how long each estimate takes to come back within
`--tolerance` of the oracle's attainment (and stay), how far each lies from the corrected one over
the horizon (points, and the area between the curves), and the attainment per `--window` of arrivals:
median [min, max] over the seeds. The definitions are in `driftsched.sim.shock`. A control scenario
runs the same arrivals with no shock (factor 1, no prompt change; `--no-control` skips it): the
recovery it reports is what window noise alone produces, the floor under which a recovery time after
a real shock says nothing.

The default load, 0.8, leaves the pool below saturation after the 3x shock too (the longer answers
raise the offered work; the page states the load after the shock), so the windows show the estimates'
effect rather than an overload that no estimate could undo.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from driftsched import results
from driftsched.bench.prompts import intake_fields
from driftsched.sim import perf_model
from driftsched.sim.command import resolve_setup
from driftsched.sim.records import from_simulation
from driftsched.sim.setup import on_config_tenants, tenant_map
from driftsched.sim.shock import Shock, apply_shock, combine_seeds, shock_figures
from driftsched.sim.simulator import Simulation, core_config_for
from driftsched.sim.workload import Workload, measured_capacity_rps, paper_workload

DEFAULT_LOAD = 0.8
CONTROL = "none (control)"
"""The scenario without a shock (factor 1, no prompt change): how often noise alone looks like one."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    default = Shock()
    ap.add_argument("--policy", default="sjf", help="the policy whose three estimates run (default sjf)")
    ap.add_argument(
        "--load", type=float, default=DEFAULT_LOAD, help=f"before the shock (default {DEFAULT_LOAD})"
    )
    ap.add_argument("--requests", type=int, default=12_000, help="requests per run (default 12000)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds seed .. seed+N-1 (default 5)")
    ap.add_argument(
        "--shock-factor",
        type=float,
        nargs="+",
        default=[3.0, 0.3],
        help=f"{default.category} answers x F at the shock; one scenario each (default 3.0 0.3)",
    )
    ap.add_argument(
        "--shock-prompt-tokens",
        type=int,
        default=default.prompt_tokens,
        help=f"tokens added to each {default.tenant} prompt at the shock (default {default.prompt_tokens})",
    )
    ap.add_argument(
        "--no-control",
        action="store_true",
        help="skip the control scenario (the same arrivals, no shock), which shows the noise floor",
    )
    ap.add_argument("--window", type=float, default=60.0, help="window of arrivals, modelled s (default 60)")
    ap.add_argument(
        "--horizon", type=float, default=300.0, help="seconds after the shock compared (default 300)"
    )
    ap.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="recovered: within this share of the oracle's attainment (default 0.02)",
    )
    ap.add_argument(
        "--config", type=Path, default=None, help="a Serve config or core mapping, as for simulate"
    )
    ap.add_argument(
        "--tenant-map",
        action="append",
        metavar="WORKLOAD=CONFIG|FILE",
        help="workload tenant -> --config tenant, as for simulate",
    )
    ap.add_argument("--replicas", type=int, default=None, help="simulated replicas (default as simulate)")
    ap.add_argument(
        "--model",
        default=None,
        choices=sorted(perf_model.MODEL_SHAPES),
        help="performance-model shape (default as simulate)",
    )
    ap.add_argument(
        "--queue-timeout", type=float, default=None, help="queue deadline, s (default as simulate)"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write summary.json and results.md here")
    ap.add_argument(
        "--results-md",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Markdown results page to PATH (docs/results/drift-shock.md)",
    )
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.requests < 100:
        ap.error(f"need --seeds >= 1 and --requests >= 100, got {args.seeds} and {args.requests}")
    return args


def variants(policy: str) -> tuple[str, str, str]:
    """(corrected, uncorrected, oracle) names of `policy`."""
    return policy, f"{policy}-uncorrected", f"{policy}-oracle"


def run_scenario(base: Workload, shock: Shock, args: argparse.Namespace, setup: Any) -> dict[str, Any]:
    """One seed, one shock: the three estimates' runs, their figures and the shock's realised size."""
    workload = apply_shock(base, shock)
    shock_s = workload.shock_s
    assert shock_s is not None
    first = next(i for i, it in enumerate(workload.items) if it.arrival_s >= shock_s)
    facts = _shock_facts(base.items[first:], workload.items[first:], shock, setup.perf, args.load)
    mapping = tenant_map(workload, setup.base, setup.tenant_map) if setup.base else None
    if mapping is not None and setup.base is not None:
        workload, config = on_config_tenants(workload, setup.base, mapping, setup.perf.kv_capacity_tokens)
    else:
        config = core_config_for(workload, setup.perf, setup.base)
    intake = [intake_fields(it, workload.block_tokens) for it in workload.items]
    runs = {}
    for name in variants(args.policy):
        sim = Simulation(
            workload,
            name,
            setup.perf,
            setup.replicas,
            config,
            queue_timeout_s=setup.queue_timeout_s,
            intake=intake,
        )
        runs[name] = from_simulation(sim.run())
    corrected, _, oracle = variants(args.policy)
    figures = shock_figures(
        runs, config.objectives(), shock_s, corrected, oracle, args.window, args.horizon, args.tolerance
    )
    return {**figures, **facts}


def _shock_facts(before: Any, after: Any, shock: Shock, perf: Any, load: float) -> dict[str, float]:
    """The realised answer-length factor and the offered load after the shock (on the same arrivals)."""
    old = sum(it.output_tokens for it in before if it.category == shock.category)
    new = sum(it.output_tokens for it in after if it.category == shock.category)
    load_after = load * measured_capacity_rps(perf, before) / measured_capacity_rps(perf, after)
    return {"realised_factor": new / old if old else math.nan, "load_after": load_after}


def _num(v: float, digits: int = 1) -> str:
    return "∞" if math.isinf(v) else ("n/a" if math.isnan(v) else f"{v:.{digits}f}")


def _cell(triple: tuple[float, float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    """median [min, max], scaled."""
    if triple is None:
        return "—"
    med, lo, hi = (v * scale for v in triple)
    return f"{_num(med, digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def summary_table(scenarios: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    corrected = args.policy
    h = f"{args.horizon / 60:g}"
    header = [
        "shock",
        "estimate",
        "attainment before (%)",
        f"0–{h} min after (%)",
        f"after {h} min (%)",
        "recovery, seed-mean curve (min)",
        "recovery per seed (min)",
        "pre-shock windows missing (%)",
        f"vs `{corrected}`, 0–{h} min (points)",
        "area (point·min)",
    ]
    rows = []
    for label, combined in scenarios.items():
        for name, fig in combined["variants"].items():
            curve = fig.get("mean_curve_recovery_s")
            rows.append(
                [
                    label,
                    f"`{name}`",
                    _cell(fig["before"]),
                    _cell(fig["horizon"]),
                    _cell(fig["after_horizon"]),
                    "—" if curve is None else _num(curve / 60),
                    _cell(fig["recovery_s"], 1 / 60),
                    "—" if curve is None else _num(100 * fig["misses_before"], 0),
                    _cell(fig["vs_corrected_points"], 1.0),
                    _cell(fig["vs_corrected_area"], 1.0),
                ]
            )
    return results.markdown_table(header, rows, "llrrrrrrrr")


def windows_table(scenarios: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """Attainment per window of the shocks (the control's windows are in summary.json)."""
    scenarios = {label: c for label, c in scenarios.items() if label != CONTROL} or scenarios
    cols = [(f, n) for f, c in scenarios.items() for n in c["variants"]]
    header = ["window (min from shock)", *(f"{f} `{n}` (%)" for f, n in cols)]
    ks = sorted(
        set.intersection(
            *(set(c["variants"][n]["windows"]) for f, c in scenarios.items() for n in c["variants"])
        )
    )
    shown = [k for k in ks if k >= -3]
    rows = [["before (pooled)", *(f"{100 * scenarios[f]['variants'][n]['before'][0]:.1f}" for f, n in cols)]]
    for k in shown:
        start = k * args.window / 60
        rows.append(
            [f"{start:+g}", *(f"{100 * scenarios[f]['variants'][n]['windows'][k]:.1f}" for f, n in cols)]
        )
    return results.markdown_table(header, rows)


def notes(scenarios: dict[str, dict[str, Any]], args: argparse.Namespace, seeds: list[int]) -> list[str]:
    default = Shock()
    corrected, uncorrected, oracle = variants(args.policy)
    shocks = "; ".join(
        f"{f}: realised {c['realised_factor'][0]:.2f}x, load after the shock "
        f"{c['load_after'][0]:.2f} [{c['load_after'][1]:.2f}, {c['load_after'][2]:.2f}]"
        for f, c in scenarios.items()
    )
    h = f"{args.horizon / 60:g}"
    return [
        f"drift-shock workload (the paper tenants, stationary), {args.requests} requests per run, "
        f"load {args.load:g} before the shock, seeds {seeds[0]}..{seeds[-1]}; median [min, max] over "
        f"the seeds. At {default.at:.0%} of the run (by arrival) {default.tenant}'s prompts gain "
        f"{args.shock_prompt_tokens} tokens and every tenant's {default.category} answers are multiplied "
        f"by the factor before max_tokens caps them ({shocks}).",
        f"Attainment: the share of the requests arriving in a window ({args.window:g} modelled s, aligned "
        "on the shock, inside the steady window of arrivals between 10 % and 90 % of the run) that "
        "completed and met both their tenant's TTFT and TPOT objectives (the config's, else the "
        "tier's); shed and expired requests miss. Recovery: the start of the first window after the "
        f"shock from which the estimate stays within {100 * args.tolerance:g} points of `{oracle}` in "
        "every later window (∞: not within the run), per seed and on the seed-mean curve of the "
        "difference; pre-shock windows missing: how often that curve misses by the same rule before "
        "the shock (noise alone). "
        f"vs `{corrected}`: pooled attainment minus the corrected one's over the first {h} min after "
        "the shock; area: the sum over those windows of the difference in points times the window in "
        "minutes.",
        f"`{corrected}` runs on drift-corrected estimates, `{uncorrected}` on the raw ones (correction "
        f"off), `{oracle}` on the true output lengths (a simulator-only reference).",
        f"`{CONTROL}`: the same arrivals without any shock; its recovery times are what the noise of "
        "the windows alone produces.",
    ]


def _finite(doc: Any) -> Any:
    """`doc` with inf and NaN as null (strict JSON), tuples as lists."""
    if isinstance(doc, dict):
        return {str(k): _finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_finite(v) for v in doc]
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = resolve_setup(argparse.Namespace(**{**vars(args), "tenant_map": args.tenant_map}))
    seeds = list(range(args.seed, args.seed + args.seeds))
    shocks = {f"×{f:g}": Shock(factor=f, prompt_tokens=args.shock_prompt_tokens) for f in args.shock_factor}
    if not args.no_control:
        shocks[CONTROL] = Shock(factor=1.0, prompt_tokens=0)
    per: dict[str, list[dict[str, Any]]] = {label: [] for label in shocks}
    started = time.perf_counter()
    for seed in seeds:
        base = paper_workload(
            args.requests, seed=seed, replicas=setup.replicas, load=args.load, perf=setup.perf, drift=False
        )
        for label, shock in shocks.items():
            figures = run_scenario(base, shock, args, setup)
            per[label].append({"seed": seed, **figures})
            rec = figures["variants"][args.policy]["recovery_s"]
            print(
                f"seed {seed} {label}: shock at {figures['shock_s']:.0f} s, corrected recovery "
                f"{rec:.0f} s ({time.perf_counter() - started:.0f} s so far)",
                flush=True,
            )
    scenarios = {f: combine_seeds(runs, variants(args.policy)[2], args.tolerance) for f, runs in per.items()}
    summary, table = summary_table(scenarios, args), windows_table(scenarios, args)
    print(summary, "", table, sep="\n")
    command = results.command_line(
        "python benchmarks/bench_drift_shock.py", sys.argv[1:] if argv is None else argv
    )
    source = results.provenance(command, f"modelled NVIDIA L4, {setup.model}, {setup.replicas} replicas")
    text = results.page(source, table, notes(scenarios, args, seeds), summary)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {"per_seed": per, "combined": scenarios}
        (args.out / "summary.json").write_text(json.dumps(_finite(doc), indent=1) + "\n")
    for path in results.write_page(text, [args.out / "results.md" if args.out else None, args.results_md]):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
