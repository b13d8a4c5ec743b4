"""The QoS protocol: every target of issue #24 measured on the simulator, with a verdict per target.

One command runs our policy, FIFO and the peers' schedulers side by side on the same workloads, loads
and seeds (each run through the same `Simulation` as `driftsched simulate`: same intake, dispatch,
placement and queue deadline) and prints, per target, the figure with its 95 % interval over seeds and
a verdict: **met**, **missed**, or **unresolved** (the interval straddles the target). Nothing here
decides a verdict on one run's point.

Stages (``--stages``):

* ``stable``: loads 0.7, 0.8, 0.9, 0.95 of the workload's measured capacity, steady window. Targets:
  overall TTFT p99 <= 0.5x FIFO's at 0.9 and 0.95; every tenant's attainment (both objectives) >= FIFO's
  and >= every peer's; E2E p99 <= 1.0x FIFO's (interval's upper end <= 1.03x); every tenant >= 99 %
  at 0.9.
* ``capacity``: the highest load at which every tenant keeps >= 90 % attainment (interpolated on the
  load grid of ``stable`` plus 0.5, 0.6, 1.0, 1.05), per seed; ours >= 1.3x FIFO's and >= every peer's.
* ``overload``: loads 1.1 and 1.25. Goodput >= 1.3x FIFO's and >= 1.1x the best peer's; work shed or
  expired (output tokens, steady window) <= 1.1x the physical excess 1 - 1/load; a tenant within its
  fair share (offered output tokens <= its weight's share) loses <= 1 point of attainment against
  load 0.8.
* ``trace``: the Azure conversation trace at its own timestamps (its bursts), 2 replicas: goodput
  against FIFO and the best peer, shed share. The trace's arrivals do not change with the seed, so it
  runs once.

Workloads: ``paper`` and ``saas`` (`driftsched.sim.workload`), tenants' objectives from their tiers
(`driftsched.core.slo`). Seeds default to 100.., which no policy was developed on.

    python benchmarks/bench_slo.py --out results/slo --results-md docs/results/slo.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from driftsched import results
from driftsched.bench.prompts import intake_fields
from driftsched.core.config import CoreConfig
from driftsched.sim.attainment import in_window, outcomes, steady_window
from driftsched.sim.command import add_arguments, build_workload, resolve_setup
from driftsched.sim.records import as_records
from driftsched.sim.report import policy_summary, write_summary
from driftsched.sim.seeds import ci_text as _ci_text
from driftsched.sim.seeds import mean_ci, verdict
from driftsched.sim.simulator import Simulation, core_config_for

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
STABLE_LOADS = (0.7, 0.8, 0.9, 0.95)
CAPACITY_EXTRA = (0.5, 0.6, 1.0, 1.05)
OVERLOAD_LOADS = (1.1, 1.25)
PEERS = ("vllm-priority", "llmd-flow", "dynamo-wspt", "dynamo-edf")
ATTAINMENT_FLOOR = 0.9  # capacity at SLO: every tenant at least this share
Task = tuple[str, float | None, int]  # (workload, load or None for a trace's own timestamps, seed)


def _simulate_args(workload: str, load: float | None, seed: int, requests: int) -> argparse.Namespace:
    """The `driftsched simulate` arguments of one run (so workloads are built exactly as it builds them)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--requests", str(requests), "--seed", str(seed), "--out", "unused"]
    if workload == "azure":
        argv += ["--trace", str(TRACES / "azure2023_conv.csv"), "--trace-format", "azure"]
    else:
        argv += ["--workload", workload]
    if load is not None:
        argv += ["--load", str(load)]
    return parser.parse_args(argv)


NO_ADMISSION = "-no-admission"
"""Suffix of a run without DriftSched's SLO-aware admission (`scheduler.admission.enabled: false`)."""


def _without_admission(config: CoreConfig, tpot_guard: bool = True) -> CoreConfig:
    """`config` without DriftSched's admission, and without its TPOT guard unless `tpot_guard`."""
    data = config.model_dump()
    data["scheduler"]["admission"]["enabled"] = False
    data["scheduler"]["placement"]["tpot_guard"] = tpot_guard and config.scheduler.placement.tpot_guard
    return CoreConfig.model_validate(data)


def run_task(task: Task, policies: Sequence[str], requests: int, ours: str) -> dict[str, Any]:
    """Every policy on one (workload, load, seed): its summary per policy, plus the work measures.

    Only `ours` runs with DriftSched's admission and TPOT guard (the config's defaults); FIFO and the
    peers run as their own schedulers do, queueing whatever arrives until its deadline and filling the
    replicas' KV whatever the pace, and a name ending in `NO_ADMISSION` runs that policy without
    admission but with the guard (ours without admission separates the two effects).
    """
    workload_name, load, seed = task
    args = _simulate_args(workload_name, load, seed, requests)
    setup = resolve_setup(args)
    workload = build_workload(argparse.Namespace(**{**vars(args), "replicas": setup.replicas}), setup.perf)
    config = core_config_for(workload, setup.perf)
    plain, unguarded = _without_admission(config), _without_admission(config, tpot_guard=False)
    objectives = config.objectives()
    intake = [intake_fields(it, workload.block_tokens) for it in workload.items]
    weights = {t.name: t.weight for t in config.tenants}
    out: dict[str, Any] = {"workload": workload_name, "load": load, "seed": seed, "policies": {}}
    for name in policies:
        policy = name.removesuffix(NO_ADMISSION)
        used = config if name == ours else plain if name.endswith(NO_ADMISSION) else unguarded
        sim = Simulation(workload, policy, setup.perf, setup.replicas, used,
                         queue_timeout_s=setup.queue_timeout_s, intake=intake)
        rec = as_records(sim.run())
        summary = policy_summary(rec, objectives)
        inside = in_window(rec, steady_window(rec))
        ended = outcomes(rec)
        work = np.nan_to_num(rec.output_tokens)
        lost = inside & np.isin(ended, ("shed", "expired", "rejected", "error"))
        summary["lost_work_share"] = float(work[lost].sum() / work[inside].sum())
        total = work[inside].sum()
        summary["within_fair_share"] = {
            t: bool(work[inside & (rec.tenant == t)].sum() / total <= w / sum(weights.values()))
            for t, w in weights.items()
        }
        out["policies"][name] = summary
    return out


def _both(summary: dict[str, Any], tenant: str | None = None) -> float:
    part = summary if tenant is None else summary["per_tenant"][tenant]
    return float(part["slo"]["both"])


def _num(value: Any, null: float = math.inf) -> float:
    return null if value is None else float(value)


def capacity(points: dict[float, dict[str, Any]], policy: str) -> float:
    """Highest load at which every tenant keeps `ATTAINMENT_FLOOR` of both objectives: the last grid load
    where the worst tenant is at or above it, interpolated linearly towards the first load below it."""
    loads = sorted(points)
    worst = []
    for load in loads:
        summary = points[load]["policies"][policy]
        worst.append(min(_both(summary, t) for t in summary["per_tenant"]))
    if worst[0] < ATTAINMENT_FLOOR:
        return loads[0] * worst[0] / ATTAINMENT_FLOOR  # below the grid: scale down (a lower bound)
    for k in range(1, len(loads)):
        if worst[k] < ATTAINMENT_FLOOR:
            lo, hi = loads[k - 1], loads[k]
            return lo + (hi - lo) * (worst[k - 1] - ATTAINMENT_FLOOR) / (worst[k - 1] - worst[k])
    return loads[-1]


class Protocol:
    """Collects the runs of every stage and turns them into target rows (figure, interval, verdict)."""

    def __init__(self, ours: str, peers: Sequence[str]) -> None:
        self.ours, self.peers = ours, list(peers)
        self.runs: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
        self.rows: list[tuple[str, str, str, str]] = []  # (target, setting, figure, verdict)
        self.capacities: dict[str, dict[str, dict[str, Any]]] = {}  # workload -> policy -> mean_ci

    def add(self, run: dict[str, Any]) -> None:
        self.runs.setdefault((run["workload"], run["load"]), []).append(run)

    def seeds(self, workload: str, load: float | None) -> list[dict[str, Any]]:
        return sorted(self.runs.get((workload, load), []), key=lambda r: r["seed"])

    def _paired(self, workload: str, load: float | None, figure: Callable[[dict[str, Any]], float],
                other: str, combine: Callable[[float, float], float]) -> dict[str, Any]:
        return mean_ci([combine(figure(r["policies"][self.ours]), figure(r["policies"][other]))
                        for r in self.seeds(workload, load)])

    def row(self, target: str, setting: str, ci: dict[str, Any], ok: Callable[[float], bool],
            fmt: str = ".2f", unit: str = "") -> None:
        self.rows.append((target, setting, _ci_text(ci, fmt, unit), verdict(ci, ok)))

    def stable(self, workload: str) -> None:
        ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
        points = lambda a, b: 100 * (a - b)  # noqa: E731
        for load in STABLE_LOADS:
            runs = self.seeds(workload, load)
            if not runs:
                continue
            setting = f"{workload} @ {load:g}"
            if load >= 0.9:
                ci = self._paired(workload, load, lambda p: _num(p["ttft_s"]["p99"]), "fifo", ratio)
                self.row("TTFT p99 <= 0.5x FIFO", setting, ci, lambda v: v <= 0.5, unit="x")
            ci = self._paired(workload, load, lambda p: _num(p["e2e_s"]["p99"]), "fifo", ratio)
            self.row("E2E p99 <= 1.0x FIFO (upper <= 1.03x)", setting, ci,
                     lambda v, mean=ci["value"]: v <= 1.03 and mean <= 1.0, unit="x")
            tenants = list(runs[0]["policies"][self.ours]["per_tenant"])
            for other in ["fifo", *self.peers]:
                worst: dict[str, Any] | None = None
                for tenant in tenants:
                    ci = self._paired(workload, load, lambda p, t=tenant: _both(p, t), other, points)
                    if worst is None or ci["value"] < worst["value"]:
                        worst, worst_tenant = ci, tenant
                assert worst is not None
                self.row(f"every tenant's attainment >= {other}'s", f"{setting} (worst: {worst_tenant})",
                         worst, lambda v: v >= -1e-9, fmt="+.2f", unit=" pts")
            if load == 0.9:
                for tenant in tenants:
                    ci = mean_ci([100 * _both(r["policies"][self.ours], tenant) for r in runs])
                    self.row("every tenant >= 99 % attainment", f"{setting}: {tenant}", ci,
                             lambda v: v >= 99.0, fmt=".2f", unit=" %")

    def capacity(self, workload: str) -> None:
        loads = sorted(l_ for (w, l_) in self.runs if w == workload and l_ is not None and l_ <= 1.05)
        if len(loads) < 2:
            return
        seeds = sorted({r["seed"] for l_ in loads for r in self.seeds(workload, l_)})
        per_seed: dict[str, list[float]] = {}
        for seed in seeds:
            grid = {l_: r for l_ in loads for r in self.seeds(workload, l_) if r["seed"] == seed}
            if len(grid) != len(loads):
                continue
            for name in ["fifo", self.ours, *self.peers]:
                per_seed.setdefault(name, []).append(capacity(grid, name))
        if not per_seed:
            return
        setting = f"{workload}, loads {', '.join(f'{l_:g}' for l_ in loads)}"
        self.capacities[workload] = {n: mean_ci(v) for n, v in per_seed.items()}
        ours = per_seed[self.ours]
        for other, bar in [("fifo", 1.3), *((p, 1.0) for p in self.peers)]:
            ci = mean_ci([a / b for a, b in zip(ours, per_seed[other], strict=True)])
            self.row(f"capacity at SLO >= {bar:g}x {other}'s", setting, ci, lambda v, b=bar: v >= b, unit="x")

    def overload(self, workload: str) -> None:
        ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
        goodput = lambda p: float(p["goodput"]["tokens_per_s"])  # noqa: E731
        base = {r["seed"]: r for r in self.seeds(workload, 0.8)}
        for load in [*OVERLOAD_LOADS, None]:
            runs = self.seeds(workload, load)
            if not runs:
                continue
            setting = f"{workload} @ {'its timestamps' if load is None else f'{load:g}'}"
            ci = self._paired(workload, load, goodput, "fifo", ratio)
            self.row("goodput >= 1.3x FIFO", setting, ci, lambda v: v >= 1.3, unit="x")
            best = max(self.peers, key=lambda p: statistics.median(goodput(r["policies"][p]) for r in runs))
            ci = self._paired(workload, load, goodput, best, ratio)
            self.row(f"goodput >= 1.1x best peer ({best})", setting, ci, lambda v: v >= 1.1, unit="x")
            if load is not None:
                excess = 1 - 1 / load
                ci = mean_ci([r["policies"][self.ours]["lost_work_share"] / excess for r in runs])
                self.row(f"work shed <= 1.1x excess ({100 * excess:.0f} %)", setting, ci,
                         lambda v: v <= 1.1, unit="x")
                for tenant, within in runs[0]["policies"][self.ours]["within_fair_share"].items():
                    if not within or not base:
                        continue
                    drops = [100 * (_both(r["policies"][self.ours], tenant)
                                    - _both(base[r["seed"]]["policies"][self.ours], tenant))
                             for r in runs if r["seed"] in base]
                    self.row("within-share tenant loses <= 1 pt vs load 0.8", f"{setting}: {tenant}",
                             mean_ci(drops), lambda v: v >= -1.0, fmt="+.2f", unit=" pts")


def _table(protocol: Protocol, workload: str, load: float | None, names: Sequence[str]) -> str:
    """Per policy: each tenant's attainment of both objectives, goodput, TTFT and E2E p99, shed+expired
    (medians over seeds)."""
    runs = protocol.seeds(workload, load)
    if not runs:
        return ""
    tenants = list(runs[0]["policies"][names[0]]["per_tenant"])
    head = ["policy", *(f"{t} both" for t in tenants), "goodput tok/s", "TTFT p99 s", "E2E p99 s",
            "shed+expired"]
    rows = []
    for name in names:
        ps = [r["policies"][name] for r in runs]

        def med(f: Callable[[dict[str, Any]], float], ps: list[dict[str, Any]] = ps) -> float:
            return statistics.median(f(p) for p in ps)

        rows.append([
            f"`{name}`",
            *(f"{100 * med(lambda p, t=t: _both(p, t)):.1f} %" for t in tenants),
            f"{med(lambda p: float(p['goodput']['tokens_per_s'])):,.0f}",
            _fmt_s(med(lambda p: _num(p["ttft_s"]["p99"]))),
            _fmt_s(med(lambda p: _num(p["e2e_s"]["p99"]))),
            f"{100 * med(lambda p: p['shed_share'] + p['expired_share']):.1f} %",
        ])
    return results.markdown_table(head, rows)


def _fmt_s(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="paper,saas")
    parser.add_argument("--stages", default="stable,capacity,overload,trace")
    parser.add_argument("--ours", default="slo", help="our policy (default slo)")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--also", default="slo-no-admission,priority,bounded",
                        help="more policies shown, not judged (without admission)")
    parser.add_argument("--requests", type=int, default=8000, help="requests per run (default 8000)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=100, help="first seed (default 100: held out)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (default 2)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results-md", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    also = [p.strip() for p in args.also.split(",") if p.strip()]
    names = list(dict.fromkeys(["fifo", args.ours, *peers, *also]))
    loads: set[float] = set()
    if "stable" in stages or "capacity" in stages:
        loads |= set(STABLE_LOADS)
    if "capacity" in stages:
        loads |= set(CAPACITY_EXTRA)
    if "overload" in stages:
        loads |= {*OVERLOAD_LOADS, 0.8}
    seeds = range(args.seed, args.seed + args.seeds)
    tasks: list[Task] = [(w, l_, s) for w in workloads for l_ in sorted(loads) for s in seeds]
    if "trace" in stages:
        tasks.append(("azure", None, args.seed))
    protocol = Protocol(args.ours, peers)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_task, t, names, args.requests if t[0] != "azure" else 100_000, args.ours)
                   for t in tasks]
        for k, future in enumerate(futures, 1):
            run = future.result()
            protocol.add(run)
            print(f"[{k}/{len(tasks)}] {run['workload']} load {run['load']} seed {run['seed']} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    write_summary({"runs": [r for rs in protocol.runs.values() for r in rs]}, args.out)
    for w in workloads:
        if "stable" in stages:
            protocol.stable(w)
        if "capacity" in stages:
            protocol.capacity(w)
        if "overload" in stages:
            protocol.overload(w)
    if "trace" in stages:
        protocol.overload("azure")
    targets = results.markdown_table(["target", "setting", "ours vs. other: mean [95 % interval]", "verdict"],
                                     [list(r) for r in protocol.rows])
    print(targets)
    details: list[str] = []
    for w in [*workloads, *(["azure"] if "trace" in stages else [])]:
        for load in sorted(l_ for (w2, l_) in protocol.runs if w2 == w and l_ is not None) or [None]:
            table = _table(protocol, w, load, names)
            if table:
                details += [f"### {w} at {'its own timestamps' if load is None else f'load {load:g}'}",
                            table]
    caps = protocol.capacities
    cap_rows = [[w, *(_ci_text(c[n]) for n in ["fifo", args.ours, *peers])] for w, c in caps.items()]
    cap_table = results.markdown_table(["workload", "fifo", args.ours, *peers], cap_rows) if cap_rows else ""
    (args.out / "protocol.json").write_text(json.dumps(
        {"targets": protocol.rows, "capacity": caps}, indent=2, default=str) + "\n")
    command = results.command_line("python benchmarks/bench_slo.py", sys.argv[1:] if argv is None else argv)
    source = results.provenance(command, "modelled NVIDIA L4, the simulator's default replicas and model")
    notes = [
        f"Our policy: `{args.ours}` with DriftSched's SLO-aware admission and TPOT guard (the defaults); "
        f"peers: {', '.join(f'`{p}`' for p in peers)}; FIFO the floor. FIFO, the peers and the other "
        "policies shown run without either, as their own schedulers do: every request waits until it is "
        "served or its queue deadline passes, and replicas fill their KV whatever their pace "
        f"(`{args.ours}{NO_ADMISSION}` is ours without admission, with the guard). "
        f"{args.requests} requests per run, seeds {args.seed}..{args.seed + args.seeds - 1} (held out from "
        "development); figures over the steady window (arrivals from 10 % to 90 % of the run). Intervals "
        "are 95 % Student-t intervals over seeds of paired per-seed differences or ratios; a verdict is "
        "`met` or `missed` only when the whole interval is on one side of the target.",
        "Objectives per tenant are its tier's (docs/configuration.md, `core.tier_objectives`). Attainment "
        "(\"both\") is the share of requests sent that met TTFT and TPOT; shed, expired and failed requests "
        "miss. Goodput: output tokens/s of requests that met both.",
    ]
    body = []
    if cap_table:
        body += ["### Capacity at SLO: the load at which every tenant keeps 90 % (mean [95 % interval])",
                 cap_table]
    body += details
    text = results.page(source, "\n\n".join(body), notes, summary=targets)
    for path in results.write_page(text, [args.out / "results.md", args.results_md]):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
