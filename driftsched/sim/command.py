"""`driftsched simulate`: build a workload, run every policy on it, report.

The same core config (from `--config` or defaults; tenants as `driftsched.sim.setup` decides) is used
for every policy, and each run gets a fresh scheduler, estimator and engines, so runs are independent
and the whole command is deterministic for a given seed. Every run writes summary.json, requests.csv,
the plots and results.md (`driftsched.results`: the table with its command line, commit and machine);
``--results-md docs/results/simulate.md`` also writes that page where the docs include it.

Placement: ``--placement RULE`` runs under one placement rule (default: the config's,
`PlacementConfig.rule`); ``--placements A,B,...`` runs the whole command once per rule, each under
``OUT/<rule>/`` on the same workload and seeds, then prints (and writes to ``OUT/placements.json``) each
rule's prefix-hit rate, TTFT p50/p90, output tokens/s and busiest replica's share side by side, with the
hit rate of one LRU cache holding the pool's whole KV (`driftsched.sim.prefix_reference`). Traces are
clipped to the model's context (the config's ``max_request_tokens``, at most one replica's KV).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deployments.replica_config import ReplicaConfig
from driftsched import results
from driftsched.bench.prompts import intake_fields
from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S, PLACEMENT_RULES, CoreConfig, SchedulerConfig
from driftsched.sim import perf_model, traces
from driftsched.sim.prefix_reference import single_lru_hit_rate
from driftsched.sim.report import format_table, write_results, write_summary
from driftsched.sim.results_table import (
    LEGEND,
    PLACEMENT_LEGEND,
    placement_comparison,
    placement_table,
    results_table,
    summary_table,
    window_and_objectives,
)
from driftsched.sim.seeds import aggregate, format_spread, format_versus
from driftsched.sim.setup import (
    ShippedSetup,
    engine_settings,
    load_setup,
    on_config_tenants,
    parse_mapping,
    tenant_map,
)
from driftsched.sim.simulator import (
    ORACLE,
    REFERENCES,
    Simulation,
    core_config_for,
    with_placement,
)
from driftsched.sim.workload import Workload, paper_workload, scale_to_load

TRACE_FORMATS = ("driftsched", "azure", "mooncake", "sharegpt")
DEFAULT_POLICIES = "fifo,priority,bounded,slo,vllm-priority,llmd-flow,dynamo-wspt,dynamo-edf"
# Five seeds: enough for a Student-t interval on each ratio to FIFO (t(0.975, 4) = 2.78).
DEFAULT_SEEDS = 5
# Offered work 10% above what greedy (vLLM-style) admission sustains on the mix: sustained contention.
DEFAULT_PAPER_LOAD = 1.1
# The sessions workload's own default: its capacity is measured without the prefix cache it exercises.
DEFAULT_LOADS = {"sessions": 1.0}
# Without --config: the replicas' own defaults (`ReplicaConfig`), as a config that names none gets.
_DEFAULT_REPLICA = ReplicaConfig()
DEFAULT_REPLICAS = _DEFAULT_REPLICA.num_replicas
DEFAULT_MODEL = _DEFAULT_REPLICA.model
DEFAULT_ENGINE = engine_settings(_DEFAULT_REPLICA)


def add_workload_arguments(parser: argparse.ArgumentParser, default_requests: int = 20_000) -> None:
    """What to run: --workload or --trace and how to read it; shared with the live benchmarks."""
    from driftsched.sim.shock import Shock  # the drift-shock workload's defaults

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--workload",
        choices=["paper", "saas", "drift-shock", "sessions", "hot-prefix"],
        help="synthetic multi-tenant workload: paper (with mid-run drift), saas (other tenants, "
        "stationary), drift-shock (the paper tenants, stationary, then one shock mid-run; "
        "see driftsched/sim/shock.py) or sessions (multi-turn conversations and agents whose context "
        "grows turn by turn; see driftsched/sim/sessions.py) or hot-prefix (saas with one tenant "
        "sending half the requests behind one long common prefix, an adversary for cache affinity)",
    )
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
        help="offered work / measured saturated capacity of the replicas; default 1.1 for --workload "
        "(sessions: 1.0), trace timestamps kept for --trace unless given",
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
    shock = Shock()
    parser.add_argument(
        "--shock-factor",
        type=float,
        default=shock.factor,
        help=f"drift-shock: {shock.category} answers become this many times longer at the shock "
        f"(default {shock.factor:g}; e.g. 0.3 for shorter)",
    )
    parser.add_argument(
        "--shock-prompt-tokens",
        type=int,
        default=shock.prompt_tokens,
        help=f"drift-shock: tokens added to each {shock.tenant} prompt at the shock (default "
        f"{shock.prompt_tokens}; negative removes)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated policies (default {DEFAULT_POLICIES}); {', '.join(REFERENCES)} always run too "
        "(in summary.json; in results.md only when named)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a Serve config (e.g. config.l4.yaml), the app's args, or a bare core mapping: its scheduler, "
        "estimator and classifier settings; a Serve config also gives the replicas, the model and the "
        "queue deadline; its tenants are used when the workload's map onto them (see --tenant-map)",
    )
    parser.add_argument(
        "--tenant-map",
        action="append",
        metavar="WORKLOAD=CONFIG|FILE",
        help="workload tenant -> --config tenant, repeated, or a JSON/YAML file (default: same name, or "
        "support-bot=interactive, code-assist=batch, docs-pipeline=batch, content-studio=free where the "
        "config has those tenants; otherwise the workload's tenants replace the config's)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help=f"simulated L4 replicas (default: --config's replicas.num_replicas, else {DEFAULT_REPLICAS})",
    )
    parser.add_argument(
        "--model",
        choices=sorted(perf_model.MODEL_SHAPES),
        default=None,
        help=f"model shape for the L4 performance model (default: --config's replicas.model, else "
        f"{DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=None,
        help="seconds a request may wait in its queue before it expires, as the gateway's "
        f"queue_timeout_s answers 504 (default: --config's gateway.queue_timeout_s, else "
        f"{DEFAULT_QUEUE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        help="run seeds seed .. seed+N-1 (each in OUT/seed-S/) and report the median and spread, and each "
        f"policy against fifo with a 95%% interval over the seeds (default {DEFAULT_SEEDS})",
    )
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument(
        "--placement",
        choices=PLACEMENT_RULES,
        default=None,
        help="placement rule (default: --config's scheduler.placement.rule, else driftsched)",
    )
    placement.add_argument(
        "--placements",
        default=None,
        metavar="RULE,RULE,...",
        help=f"run once per placement rule, each under OUT/<rule>/ on the same workload and seeds, and "
        f"compare them ({', '.join(PLACEMENT_RULES)}; e.g. all of them)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory: summary.json, requests.csv, results.md, plots",
    )
    parser.add_argument(
        "--results-md",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Markdown results page to PATH (the headline run: docs/results/simulate.md)",
    )


def _trace_format(path: Path, given: str | None) -> str:
    if given:
        return given
    name = path.name.lower()
    for fmt, hint in (("azure", "azure"), ("mooncake", "mooncake"), ("sharegpt", "sharegpt")):
        if hint in name:
            return fmt
    return "driftsched"


def default_load(args: argparse.Namespace) -> float:
    """--load, else the workload's default (`DEFAULT_LOADS`, else `DEFAULT_PAPER_LOAD`)."""
    if args.load is not None:
        return float(args.load)
    return DEFAULT_LOADS.get(getattr(args, "workload", None) or "", DEFAULT_PAPER_LOAD)


def context_tokens(args: argparse.Namespace, perf: perf_model.PerfModel) -> int:
    """The model's context as the run admits it: the config's ``max_request_tokens`` (given to
    `build_workload` as ``args.max_request_tokens``; else the default), at most one replica's KV."""
    given = getattr(args, "max_request_tokens", None)
    return min(given or SchedulerConfig().max_request_tokens, perf.kv_capacity_tokens)


def build_workload(args: argparse.Namespace, perf: perf_model.PerfModel) -> Workload:
    if args.workload is not None:
        from driftsched.sim.shock import Shock, drift_shock_workload
        from driftsched.sim.workload import hot_prefix_workload, saas_workload

        load = default_load(args)
        n, seed, replicas = args.requests, args.seed, args.replicas
        if args.workload == "sessions":
            from driftsched.sim.sessions import sessions_workload

            return sessions_workload(n, seed=seed, replicas=replicas, load=load, perf=perf)
        if args.workload == "saas":
            return saas_workload(n, seed=seed, replicas=replicas, load=load, perf=perf)
        if args.workload == "hot-prefix":
            return hot_prefix_workload(n, seed=seed, replicas=replicas, load=load, perf=perf)
        if args.workload == "drift-shock":
            default = Shock()
            shock = Shock(
                factor=getattr(args, "shock_factor", default.factor),
                prompt_tokens=getattr(args, "shock_prompt_tokens", default.prompt_tokens),
            )
            return drift_shock_workload(n, seed=seed, replicas=replicas, load=load, perf=perf, shock=shock)
        return paper_workload(n, seed=seed, replicas=replicas, load=load, perf=perf)
    fmt = _trace_format(args.trace, args.trace_format)
    if fmt == "driftsched":
        workload = traces.load_csv(args.trace, limit=args.requests)
        if args.load is not None:
            items = scale_to_load(workload.items, perf, args.replicas, args.load)
            workload = replace(workload, items=items)
        return workload
    opts = traces.ReplayOptions(
        seed=args.seed,
        limit=args.requests,
        category=args.category_mode,
        perf=perf,
        replicas=args.replicas,
        load=args.load,
        max_request_tokens=context_tokens(args, perf),
    )
    if fmt == "azure":
        return traces.load_azure_conv(args.trace, opts)
    if fmt == "mooncake":
        return traces.load_mooncake(args.trace, opts)
    return traces.load_sharegpt_lengths(args.trace, opts)


@dataclass(frozen=True, slots=True)
class SimSetup:
    """What every seed of one `driftsched simulate` runs on: flags over `--config` over defaults."""

    perf: perf_model.PerfModel
    replicas: int
    model: str
    queue_timeout_s: float
    base: CoreConfig | None
    tenant_map: dict[str, str]
    """``--tenant-map`` as given (empty: the default rule of `setup.tenant_map`)."""


def resolve_setup(args: argparse.Namespace) -> SimSetup:
    shipped = load_setup(args.config) if args.config else ShippedSetup(core=None)

    def first(*values: Any) -> Any:  # the flag, else the config's, else the default
        return next(v for v in values if v is not None)

    model = first(args.model, shipped.model, DEFAULT_MODEL)
    engine = dict(first(shipped.engine, DEFAULT_ENGINE))
    replicas = first(args.replicas, shipped.replicas, DEFAULT_REPLICAS)
    timeout = first(args.queue_timeout, shipped.queue_timeout_s, DEFAULT_QUEUE_TIMEOUT_S)
    if replicas < 1 or not timeout > 0:
        raise ValueError(f"need --replicas >= 1 and --queue-timeout > 0, got {replicas} and {timeout}")
    perf = perf_model.PerfModel(perf_model.MODEL_SHAPES[model], **engine)
    given = parse_mapping(getattr(args, "tenant_map", None), "--tenant-map")
    return SimSetup(perf, replicas, model, timeout, shipped.core, given)


def placement_rules(args: argparse.Namespace) -> list[str | None]:
    """The rules to run: ``--placements``' (validated), else ``[--placement]`` (None: the config's)."""
    given = getattr(args, "placements", None)
    if not given:
        return [getattr(args, "placement", None)]
    rules = [r.strip() for r in given.split(",") if r.strip()]
    bad = [r for r in rules if r not in PLACEMENT_RULES]
    if bad or not rules or len(set(rules)) < len(rules):
        raise ValueError(
            f"--placements {given!r}: give distinct rules among {', '.join(PLACEMENT_RULES)}"
            + (f" (unknown: {', '.join(bad)})" if bad else "")
        )
    return list(rules)


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    setup = resolve_setup(args)
    rules = placement_rules(args)
    if not getattr(args, "placements", None):
        run_seeds(args, setup, args.out, rules[0], args.results_md)
        return 0
    medians = {}
    for rule in rules:
        print(f"== placement {rule}")
        medians[str(rule)] = run_seeds(args, setup, args.out / str(rule), rule, None)
    named = [p.strip() for p in args.policies.split(",") if p.strip()]
    comparison = placement_comparison(medians, named)
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(comparison, args.out, "placements.json")
    table = placement_table(comparison)
    command = getattr(args, "command_line", None) or results.command_line("driftsched", sys.argv[1:])
    source = results.provenance(command, f"modelled NVIDIA L4, {setup.model}, {setup.replicas} replicas")
    notes = [PLACEMENT_LEGEND]
    for path in results.write_page(results.page(source, table, notes), [args.out / "placements.md"]):
        print(f"wrote {path}")
    print(table)
    return 0


def run_seeds(
    args: argparse.Namespace, setup: SimSetup, out: Path, placement: str | None, results_md: Path | None
) -> dict[str, Any]:
    """Every policy on every seed under `placement`, written under `out`; the summary (one seed) or
    the medians over the seeds."""
    if args.seeds == 1:
        summary = run_one(args, setup, out, placement)
        print(format_table(summary))
        _write_page(args, setup, summary, f"seed {args.seed}", out, results_md)
        print(f"results in {out}/ (summary.json, results.md, requests.csv, *.png)")
        return summary
    summaries = []
    for seed in range(args.seed, args.seed + args.seeds):
        one = argparse.Namespace(**{**vars(args), "seed": seed})
        summaries.append(run_one(one, setup, out / f"seed-{seed}", placement))
    combined = aggregate(summaries)
    out.mkdir(parents=True, exist_ok=True)
    write_summary(combined, out)
    seeds = f"seeds {args.seed}..{args.seed + args.seeds - 1}"
    print(f"median over {seeds}:")
    print(format_table({k: v for k, v in combined["median"].items() if k != "vs_fifo"}))
    print("")
    print(format_spread(combined))
    if combined.get("vs_fifo"):
        print("")
        print(format_versus(combined["vs_fifo"]))
    _write_page(args, setup, combined["median"], f"median of each figure over {seeds}", out, results_md)
    print(f"results in {out}/ (summary.json: median and spread; results.md; seed-*/ per seed)")
    median: dict[str, Any] = combined["median"]
    return median


def _write_page(
    args: argparse.Namespace, setup: SimSetup, summary: dict[str, Any], seeds: str, out: Path,
    results_md: Path | None,
) -> None:
    """results.md in `out`, and at `results_md` when given."""
    named = [p.strip() for p in args.policies.split(",") if p.strip()]
    command = getattr(args, "command_line", None) or results.command_line("driftsched", sys.argv[1:])
    source = results.provenance(command, f"modelled NVIDIA L4, {setup.model}, {setup.replicas} replicas")
    mapping = summary.get("tenant_map")
    tenants = (
        "tenants: " + ", ".join(f"{w} → {c}" for w, c in mapping.items()) + " (the config's)"
        if mapping else "tenants: the workload's"
    )
    facts = (
        f"{summary['workload']} workload, {int(summary['requests'])} requests per policy, "
        f"load {_load(summary.get('load'))}, {seeds}; queue deadline {setup.queue_timeout_s:g} s; {tenants}; "
        f"placement {summary.get('placement', 'driftsched')}. Latencies in modelled seconds."
    )
    notes = [facts, window_and_objectives(summary), LEGEND]
    if ORACLE in named:
        notes.append(f"`{ORACLE}` is a simulator-only reference: SJF ordered by the true output length.")
    text = results.page(source, results_table(summary, named), notes, summary_table(summary, named))
    for path in results.write_page(text, [out / "results.md", results_md]):
        print(f"wrote {path}")


def _load(load: float | None) -> str:
    return "as the trace's timestamps" if load is None else f"{load:g}"


def run_one(
    args: argparse.Namespace, setup: SimSetup, out: Path, placement: str | None = None
) -> dict[str, Any]:
    """Every policy on one seed's workload, placed by `placement` (None: the config's rule); writes
    `out` and returns its summary."""
    from tqdm import tqdm

    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    names += [r for r in REFERENCES if r not in names]
    perf = setup.perf
    load = args.load if args.load is not None or args.trace else default_load(args)
    context = (setup.base.scheduler if setup.base else SchedulerConfig()).max_request_tokens
    workload = build_workload(
        argparse.Namespace(**{**vars(args), "replicas": setup.replicas, "max_request_tokens": context}), perf
    )
    mapping = tenant_map(workload, setup.base, setup.tenant_map) if setup.base else None
    if mapping is not None and setup.base is not None:
        workload, config = on_config_tenants(workload, setup.base, mapping, perf.kv_capacity_tokens)
    else:
        config = core_config_for(workload, perf, setup.base)
    if placement is not None:
        config = with_placement(config, placement)
    intake = [intake_fields(it, workload.block_tokens) for it in workload.items]  # what the service sees
    runs = []
    started = time.perf_counter()
    with tqdm(total=len(workload.items) * len(names), unit="req", disable=None, leave=False) as bar:
        for name in names:
            sim = Simulation(
                workload, name, perf, setup.replicas, config, progress=bar.update,
                queue_timeout_s=setup.queue_timeout_s, intake=intake,
            )
            runs.append(sim.run())
    wall = time.perf_counter() - started
    meta: dict[str, Any] = {
        "workload": workload.name,
        "requests": len(workload.items),
        "replicas": setup.replicas,
        "load": load,
        "seed": args.seed,
        "model": setup.model,
        **({"config": str(args.config)} if args.config else {}),
        **({"tenant_map": mapping} if mapping else {}),  # absent, not null: seeds.aggregate reads null as inf
        "tenants": [t.name for t in config.tenants],
        "queue_timeout_s": setup.queue_timeout_s,
        "kv_capacity_tokens": perf.kv_capacity_tokens,
        "placement": config.scheduler.placement.rule,
        **({"prefix_cache_reference": prefix_reference(workload, perf, setup.replicas)}
           if workload.block_tokens else {}),
        "wall_s": wall,
        "simulated_requests_per_wall_s": len(workload.items) * len(names) / wall,
    }
    objectives = config.objectives()  # the tenants the run used: the config's, or the workload's on tiers
    summary = write_results(
        runs, meta, out, plots=not args.no_plots, phase=workload.phases(), objectives=objectives
    )
    print(
        f"{workload.name} seed {args.seed}: {len(workload.items)} requests, {setup.replicas} replicas "
        f"({setup.model}), {len(names)} runs in {wall:.1f} s "
        f"({meta['simulated_requests_per_wall_s']:,.0f} simulated req/s)"
    )
    return summary


def prefix_reference(workload: Workload, perf: perf_model.PerfModel, replicas: int) -> dict[str, float]:
    """The hit rate of one LRU cache with the pool's whole KV (`driftsched.sim.prefix_reference`)."""
    capacity = perf.kv_capacity_tokens * replicas
    return {"hit_rate": single_lru_hit_rate(workload, capacity), "capacity_tokens": float(capacity)}
