"""`driftsched loadgen` and `driftsched bench live`: arguments and the two handlers.

Both build their workload exactly as `driftsched simulate` does (`--workload paper` or `--trace`), and
write the same summary.json, requests.csv and plots (`driftsched.sim.report`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from driftsched import results
from driftsched.bench import fidelity
from driftsched.bench.loadgen import LoadOptions, Target, run_load, to_records
from driftsched.bench.service import LocalServe, scrape_metrics, service_estimator
from driftsched.core.config import CoreConfig
from driftsched.sim import perf_model
from driftsched.sim.command import DEFAULT_POLICIES, add_workload_arguments, build_workload
from driftsched.sim.report import (
    format_table,
    policy_summary,
    write_requests_csv,
    write_results,
    write_summary,
)
from driftsched.sim.results_table import LEGEND, results_table, summary_table, window_and_objectives
from driftsched.sim.seeds import aggregate
from driftsched.sim.setup import PAPER_TENANT_MAP, load_app_args, parse_mapping
from driftsched.sim.simulator import core_config_for

__all__ = ["add_live_arguments", "add_loadgen_arguments", "parse_mapping", "run_live", "run_loadgen"]

# The local demo config (config.yaml): its tenants' public keys (the paper tenants go by PAPER_TENANT_MAP).
DEMO_KEYS = {"interactive": "sk-demo-interactive", "batch": "sk-demo-batch", "free": "sk-demo-free"}
DEMO_METRICS_TOKEN = "demo-metrics-token-public"  # config.yaml's auth.demo_metrics_token
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"

logger = logging.getLogger(__name__)


def _add_pacing(parser: argparse.ArgumentParser, time_scale: float, timeout: float) -> None:
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="Poisson arrivals at this many requests per real second instead of the "
        "workload's (time-scaled) arrival times",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="send nothing after this many real seconds (default: until the last item)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=time_scale,
        help=f"real seconds per workload second (default {time_scale:g}); reported "
        "latencies are divided by it",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"per-request limit in real seconds (default {timeout:g})",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--out", type=Path, required=True, help="output directory")


def add_loadgen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="service root or its /v1, e.g. http://127.0.0.1:8000")
    add_workload_arguments(parser, default_requests=400)
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="replicas the workload's --load is sized for (default 2, as config.yaml)",
    )
    parser.add_argument(
        "--model",
        choices=sorted(perf_model.MODEL_SHAPES),
        default="llama-3.1-8b-fp8",
        help="performance model the --load is sized for (default llama-3.1-8b-fp8)",
    )
    parser.add_argument(
        "--keys",
        action="append",
        metavar="TENANT=KEY|FILE",
        help="service tenant -> API key, repeated, or a JSON/YAML file of them "
        "(default: config.yaml's demo keys)",
    )
    parser.add_argument(
        "--tenant-map",
        action="append",
        metavar="WORKLOAD=SERVICE|FILE",
        help="workload tenant -> service tenant, repeated, or a JSON/YAML file "
        "(default for the paper tenants on the demo config: support-bot=interactive, "
        "code-assist=batch, docs-pipeline=batch, content-studio=free); "
        "unmapped tenants keep their name",
    )
    parser.add_argument(
        "--metrics-token",
        default=os.environ.get("DRIFTSCHED_METRICS_TOKEN", DEMO_METRICS_TOKEN),
        help="bearer token for the service's /metrics, read for its estimator errors "
        "(default: $DRIFTSCHED_METRICS_TOKEN, else config.yaml's demo token)",
    )
    parser.add_argument("--served-model", default=None, help="`model` field to send (default: none)")
    parser.add_argument(
        "--no-target-tokens",
        action="store_true",
        help="do not send driftsched_target_tokens (a service not in benchmark mode)",
    )
    _add_pacing(parser, time_scale=1.0, timeout=300.0)


def add_live_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies", default=DEFAULT_POLICIES, help=f"comma-separated policies (default {DEFAULT_POLICIES})"
    )
    add_workload_arguments(parser, default_requests=400)
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO_CONFIG,
        help="Serve config whose DriftSched app is benchmarked (default: config.yaml)",
    )
    parser.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the simulated side-by-side")
    parser.add_argument(
        "--results-md",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Markdown results page (always in OUT/results.md) to PATH "
        "(the headline run: docs/results/bench-live.md)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run seeds SEED .. SEED+N-1 on the one Ray Serve instance, each a full live run of every "
        "policy and its simulation (in OUT/seed-S/); OUT/summary.json then holds the medians and spread "
        "and fidelity.<policy>.seeds the live-vs-simulated verdict of every seed (default 1)",
    )
    # 0.25: at 0.1 the 2-core machine's front-end fell behind the modelled pace (makespan up to 1.29x)
    _add_pacing(parser, time_scale=0.25, timeout=150.0)


def _options(args: argparse.Namespace, block_tokens: int = 0) -> LoadOptions:
    if args.time_scale <= 0 or args.timeout <= 0:
        raise ValueError("--time-scale and --timeout must be > 0")
    return LoadOptions(
        time_scale=args.time_scale,
        rate_rps=args.rate,
        duration_s=args.duration,
        timeout_s=args.timeout,
        seed=args.seed,
        block_tokens=block_tokens,
    )


def _quiet_http_logs() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise


def run_loadgen(args: argparse.Namespace) -> int:
    _quiet_http_logs()
    url = args.url.rstrip("/")
    base_url, root = (url, url[:-3]) if url.endswith("/v1") else (url + "/v1", url)
    keys = parse_mapping(args.keys, "--keys") or dict(DEMO_KEYS)
    tenant_map = (
        parse_mapping(args.tenant_map, "--tenant-map")
        if args.tenant_map
        else {t: s for t, s in PAPER_TENANT_MAP.items() if s in keys}
    )
    perf = perf_model.PerfModel(perf_model.MODEL_SHAPES[args.model])
    workload = build_workload(args, perf)
    target = Target(base_url, keys, tenant_map, args.served_model, not args.no_target_tokens)
    options = _options(args, workload.block_tokens)
    try:
        policy = str(httpx.get(root + "/healthz", timeout=10.0).json().get("policy", "live"))
    except (httpx.HTTPError, ValueError):
        policy = "live"
    result = asyncio.run(run_load(workload.items, target, options))
    try:  # the service's own figures, over everything it has served so far
        estimator: dict[str, Any] | None = service_estimator(scrape_metrics(root, args.metrics_token))
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("no estimator figures from %s/metrics (%s); check --metrics-token", root, exc)
        estimator = None
    est = {k: estimator[k] for k in ("uncorrected", "corrected")} if estimator else None
    records = to_records(policy, workload.items, result, options.time_scale, est)
    meta = {
        "workload": workload.name,
        "requests": len(records),
        "url": base_url,
        "time_scale": args.time_scale,
        "rate": args.rate,
        "tenant_map": tenant_map,
        "seed": args.seed,
        "wall_s": result.wall_s,
    }
    summary = write_results([records], meta, args.out, plots=not args.no_plots)
    print(
        f"{workload.name}: {len(records)} requests to {base_url} in {result.wall_s:.1f} s: "
        f"{json.dumps(result.statuses())}"
    )
    print(format_table(summary))
    print(f"results in {args.out}/ (summary.json, requests.csv, *.png)")
    return 0 if records.admitted.any() else 1


@dataclass(frozen=True, slots=True)
class _LiveSetup:
    """What every seed of one `bench live` runs on: the app's args, its replicas and the policies."""

    base_args: dict[str, Any]
    perf: perf_model.PerfModel
    replicas: int
    model: str
    simulated: bool
    policies: list[str]

    def description(self, time_scale: float) -> str:
        if self.simulated:
            return (f"live Ray Serve app, {self.replicas} simulated NVIDIA L4 replicas ({self.model}) "
                    f"at time scale {time_scale:g}")
        return f"live Ray Serve app, {self.replicas} replicas ({self.model})"


def run_live(args: argparse.Namespace) -> int:
    """Every policy live (and simulated), once per seed, all on one private Ray Serve."""
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    _quiet_http_logs()
    base_args = load_app_args(args.config)
    perf, replicas, model, simulated = _live_perf(base_args)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    setup = _LiveSetup(base_args, perf, replicas, model, simulated, policies)
    seeds = list(range(args.seed, args.seed + args.seeds))
    summaries = []
    with LocalServe(port=args.port) as serve:
        for seed in seeds:
            one = argparse.Namespace(**{**vars(args), "seed": seed})
            if len(seeds) == 1:
                summaries.append(_live_seed(one, setup, serve, args.out, args.results_md))
            else:
                print(f"== seed {seed}")
                summaries.append(_live_seed(one, setup, serve, args.out / f"seed-{seed}", None))
    if len(seeds) > 1:
        _combine_seeds(args, setup, summaries)
    return 0


def _live_seed(
    args: argparse.Namespace, setup: _LiveSetup, serve: LocalServe, out: Path, results_md: Path | None
) -> dict[str, Any]:
    """One seed: every policy live, the simulator on what was sent, the summary and page under `out`."""
    from driftsched.bench.live import LivePlan, run_policies

    replicas, policies = setup.replicas, setup.policies
    workload = build_workload(argparse.Namespace(**{**vars(args), "replicas": replicas}), setup.perf)
    core = core_config_for(workload, setup.perf, CoreConfig.model_validate(setup.base_args["core"]))
    plan = LivePlan(setup.base_args, workload, core, _options(args, workload.block_tokens), args.port)
    started = time.perf_counter()
    runs = run_policies(plan, policies, serve)
    meta: dict[str, Any] = {
        "workload": workload.name,
        "requests": len(workload.items),
        "replicas": replicas,
        "model": setup.model,
        "load": args.load,
        "seed": args.seed,
        "config": _shown(args.config),
        "time_scale": args.time_scale,
        "wall_s": time.perf_counter() - started,
    }
    # The tenants the run used (the workload's, in place of the config's), judged in modelled seconds as
    # the records are: the service ran on objectives scaled to its clock (live.policy_args).
    objectives = core.objectives()
    summary = write_results(runs, meta, out, plots=not args.no_plots, objectives=objectives)
    print(
        f"{workload.name}: {len(workload.items)} requests per policy, live on {replicas} replicas "
        f"({setup.model}), time scale {args.time_scale:g}, seed {args.seed}, {meta['wall_s']:.0f} s; "
        "latencies in modelled s"
    )
    print(format_table(summary))
    if setup.simulated and not args.no_fidelity:
        sims = fidelity.simulate(  # the gateway's queue deadline, in modelled seconds
            workload, policies, setup.perf, replicas, core, queue_timeout_s=args.timeout / args.time_scale
        )
        summary["simulated"] = {r.policy: policy_summary(r, objectives) for r in sims}
        summary["fidelity"] = fidelity.compare(summary["policies"], summary["simulated"])
        simulated_runs = {r.policy: r for r in sims}
        per_seed = fidelity.by_seed({args.seed: summary["fidelity"]})
        for run in runs:
            row = summary["fidelity"][run.policy]
            row["category_match"] = fidelity.category_match(run, simulated_runs[run.policy])
            row["seeds"] = per_seed[run.policy]["seeds"]
        write_summary(summary, out)
        write_requests_csv(sims, out / "requests_simulated.csv")
        print()
        print(
            fidelity.format_comparison(
                summary["fidelity"],
                f"live vs simulated (same items, {replicas} replicas, {setup.model}), seconds; "
                f"attainment as a share",
            )
        )
    write_live_page(
        argparse.Namespace(**{**vars(args), "out": out, "results_md": results_md}), summary, policies,
        setup.description(args.time_scale), verdicts=_verdicts(summary),
    )
    print(f"results in {out}/ (summary.json, requests.csv, requests_simulated.csv, *.png)")
    return summary


def _verdicts(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The per-seed verdicts of a one-seed summary (`fidelity.by_seed`'s shape), None without fidelity."""
    rows = summary.get("fidelity")
    if not rows:
        return None
    return fidelity.by_seed({summary["seed"]: rows})


def _combine_seeds(args: argparse.Namespace, setup: _LiveSetup, summaries: list[dict[str, Any]]) -> None:
    """OUT/summary.json and the page over several seeds: medians and spread of every figure (as
    `driftsched simulate --seeds`), and ``fidelity.<policy>`` with the verdict of every seed."""
    seeds = [int(s["seed"]) for s in summaries]
    combined = aggregate([{k: v for k, v in s.items() if k != "fidelity"} for s in summaries])
    verdicts = None
    if all("fidelity" in s for s in summaries):
        verdicts = fidelity.by_seed({int(s["seed"]): s["fidelity"] for s in summaries})
        combined["fidelity"] = verdicts
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(combined, args.out)
    span = f"seeds {seeds[0]}..{seeds[-1]}"
    print(f"\nmedian over {span}:")
    print(format_table({k: v for k, v in combined["median"].items() if k != "vs_fifo"}))
    if verdicts is not None:
        print()
        print(fidelity.format_verdicts(
            verdicts, f"live vs simulated per seed (within ±{fidelity.TOLERANCE:.0%} is met)"
        ))
    median = {**combined["median"], "seed": span}
    write_live_page(args, median, setup.policies, setup.description(args.time_scale), verdicts=verdicts,
                    medians=True)
    print(f"results in {args.out}/ (summary.json: median, spread and fidelity per seed; seed-*/ per seed)")


def _shown(path: Path) -> str:
    """`path` as a results page shows it: relative to the repository when inside it (no home paths)."""
    resolved, root = path.resolve(), REPO_CONFIG.parent
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def write_live_page(
    args: argparse.Namespace, summary: dict[str, Any], policies: list[str], setup: str,
    verdicts: dict[str, Any] | None = None, medians: bool = False,
) -> None:
    """results.md in --out, and at --results-md when given (see `driftsched.results`); `verdicts`
    (`fidelity.by_seed`) adds the live-against-simulator table, `medians` says the figures are medians
    over the seeds `summary['seed']` names."""
    command = getattr(args, "command_line", None) or results.command_line("driftsched", sys.argv[1:])
    seeds = f"the median of each figure over {summary['seed']}" if medians else f"seed {summary['seed']}"
    facts = (
        f"{summary['workload']} workload, {int(summary['requests'])} requests per policy, {seeds}, "
        f"on the app of `{summary['config']}` with each policy in turn. Latencies in modelled seconds "
        "(wall time / time scale)."
    )
    notes = [facts, window_and_objectives(summary), LEGEND]
    if verdicts:
        notes += ["### Live against the simulator", fidelity.verdict_markdown(verdicts)]
    text = results.page(
        results.provenance(command, setup), results_table(summary, policies), notes,
        summary_table(summary, policies),
    )
    for path in results.write_page(text, [args.out / "results.md", args.results_md]):
        print(f"wrote {path}")


def _live_perf(base_args: dict[str, Any]) -> tuple[perf_model.PerfModel, int, str, bool]:
    """The replicas' performance model, count and model; False when they are not simulated replicas
    (then the workload is sized with the default model and there is no simulator to compare with)."""
    from deployments.replica_config import ReplicaConfig, perf_model_for

    raw = base_args.get("replicas") or {}
    try:
        config = ReplicaConfig.model_validate(raw)
    except ValueError:
        return perf_model.PerfModel(), int(raw.get("num_replicas", 1)), str(raw.get("model", "?")), False
    if config.engine != "sim":  # a vLLM checkpoint has no performance model of its own
        return perf_model.PerfModel(), config.num_replicas, config.model, False
    return perf_model_for(config), config.num_replicas, config.model, True
