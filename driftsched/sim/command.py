"""`driftsched simulate`: build a workload, run every policy on it, report.

The same core config (tenants from the workload, everything else from `--config` or defaults) is used
for every policy, and each run gets a fresh scheduler, estimator and engines, so runs are independent
and the whole command is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from driftsched.bench.prompts import intake_fields
from driftsched.core.config import CoreConfig, load_core_config
from driftsched.sim import perf_model, traces
from driftsched.sim.report import format_table, write_results, write_summary
from driftsched.sim.seeds import aggregate, format_spread
from driftsched.sim.simulator import DEFAULT_QUEUE_TIMEOUT_S, REFERENCES, Simulation, core_config_for
from driftsched.sim.workload import Workload, paper_workload, scale_to_load

TRACE_FORMATS = ("driftsched", "azure", "mooncake", "sharegpt")
DEFAULT_POLICIES = "fifo,priority,weighted,sjf,aging"
# Offered work 10% above what greedy (vLLM-style) admission sustains on the mix: sustained contention.
DEFAULT_PAPER_LOAD = 1.1


def add_workload_arguments(parser: argparse.ArgumentParser, default_requests: int = 20_000) -> None:
    """What to run: --workload or --trace and how to read it; shared with the live benchmarks."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workload", choices=["paper"], help="synthetic multi-tenant workload")
    source.add_argument("--trace", type=Path, help="trace file to replay")
    parser.add_argument(
        "--trace-format",
        choices=TRACE_FORMATS,
        default=None,
        help="trace file format (default: from the file name)",
    )
    parser.add_argument(
        "--load",
        type=float,
        default=None,
        help="offered work / measured saturated capacity of the replicas; default 1.1 for --workload, "
        "trace timestamps kept for --trace unless given",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=default_requests,
        help=f"requests to generate, or rows to read from a trace (default {default_requests})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--category-mode",
        choices=["random", "prompt_band"],
        default="prompt_band",
        help="how trace requests get a category (default prompt_band)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated policies (default {DEFAULT_POLICIES}); {', '.join(REFERENCES)} always run too",
    )
    parser.add_argument("--replicas", type=int, default=4, help="simulated L4 replicas (default 4)")
    parser.add_argument(
        "--model",
        choices=sorted(perf_model.MODEL_SHAPES),
        default="llama-3.1-8b-bf16",
        help="model shape for the L4 performance model (default llama-3.1-8b-bf16)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML CoreConfig for estimator/classifier/scheduler settings "
        "(its tenants are replaced by the workload's)",
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=DEFAULT_QUEUE_TIMEOUT_S,
        help="seconds a request may wait in its queue before it expires, as the gateway's "
        f"queue_timeout_s answers 504 (default {DEFAULT_QUEUE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run seeds seed .. seed+N-1 (each in OUT/seed-S/) and report the median and spread (default 1)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--out", type=Path, required=True, help="output directory")


def _trace_format(path: Path, given: str | None) -> str:
    if given:
        return given
    name = path.name.lower()
    for fmt, hint in (("azure", "azure"), ("mooncake", "mooncake"), ("sharegpt", "sharegpt")):
        if hint in name:
            return fmt
    return "driftsched"


def build_workload(args: argparse.Namespace, perf: perf_model.PerfModel) -> Workload:
    if args.workload == "paper":
        load = DEFAULT_PAPER_LOAD if args.load is None else args.load
        return paper_workload(args.requests, seed=args.seed, replicas=args.replicas, load=load, perf=perf)
    fmt = _trace_format(args.trace, args.trace_format)
    if fmt == "driftsched":
        workload = traces.load_csv(args.trace, limit=args.requests)
        if args.load is not None:
            items = scale_to_load(workload.items, perf, args.replicas, args.load)
            workload = Workload(workload.name, items, workload.tenants, workload.phase_starts)
        return workload
    opts = traces.ReplayOptions(
        seed=args.seed,
        limit=args.requests,
        category=args.category_mode,
        perf=perf,
        replicas=args.replicas,
        load=args.load,
    )
    if fmt == "azure":
        return traces.load_azure_conv(args.trace, opts)
    if fmt == "mooncake":
        return traces.load_mooncake(args.trace, opts)
    return traces.load_sharegpt_lengths(args.trace, opts)


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    if args.seeds == 1:
        summary = run_one(args, args.out)
        print(format_table(summary))
        print(f"results in {args.out}/ (summary.json, requests.csv, *.png)")
        return 0
    summaries = []
    for seed in range(args.seed, args.seed + args.seeds):
        one = argparse.Namespace(**{**vars(args), "seed": seed})
        summaries.append(run_one(one, args.out / f"seed-{seed}"))
    combined = aggregate(summaries)
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(combined, args.out)
    print(f"median over seeds {args.seed}..{args.seed + args.seeds - 1}:")
    print(format_table(combined["median"]))
    print("")
    print(format_spread(combined))
    print(f"results in {args.out}/ (summary.json: median and spread; seed-*/ per seed)")
    return 0


def run_one(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every policy on one seed's workload; writes `out` and returns its summary."""
    from tqdm import tqdm

    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    names += [r for r in REFERENCES if r not in names]
    perf = perf_model.PerfModel(perf_model.MODEL_SHAPES[args.model])
    base: CoreConfig | None = load_core_config(args.config) if args.config else None
    workload = build_workload(args, perf)
    config = core_config_for(workload, perf, base)
    intake = [intake_fields(it) for it in workload.items]  # what the service would see, once
    runs = []
    started = time.perf_counter()
    with tqdm(total=len(workload.items) * len(names), unit="req", disable=None, leave=False) as bar:
        for name in names:
            sim = Simulation(
                workload, name, perf, args.replicas, config, progress=bar.update,
                queue_timeout_s=args.queue_timeout, intake=intake,
            )
            runs.append(sim.run())
    wall = time.perf_counter() - started
    meta: dict[str, Any] = {
        "workload": workload.name,
        "requests": len(workload.items),
        "replicas": args.replicas,
        "load": args.load,
        "seed": args.seed,
        "model": args.model,
        "queue_timeout_s": args.queue_timeout,
        "kv_capacity_tokens": perf.kv_capacity_tokens,
        "wall_s": wall,
        "simulated_requests_per_wall_s": len(workload.items) * len(names) / wall,
    }
    summary = write_results(runs, meta, out, plots=not args.no_plots, phase=workload.phases())
    print(
        f"{workload.name} seed {args.seed}: {len(workload.items)} requests, {args.replicas} replicas "
        f"({args.model}), {len(names)} runs in {wall:.1f} s "
        f"({meta['simulated_requests_per_wall_s']:,.0f} simulated req/s)"
    )
    return summary
