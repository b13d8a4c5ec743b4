"""Sharded scheduling keeps the policy's results: one scheduler over 8 replicas vs shards of fewer.

The design past one scheduler actor is one scheduler per shard of the pool, each with its own replicas
and queue, the ingress routing every request to one shard (docs/design-notes.md, "Scheduler shards").
Whether the policy still delivers is a simulator question: the paper workload, offered at `--load` times
the capacity of `--replicas` L4 replicas, runs once on one `Simulation` over all of them, then split
into `--shards` sub-workloads, each run by its own `Simulation` (own scheduler, placement, estimator)
over its share of the replicas, the per-request records merged back. Two routings:

* **by request**: request i goes to shard i mod k (round-robin; a hash of the request id does the same
  in expectation). Every shard sees every tenant, so a tenant's per-minute quotas are split k ways, and
  each shard learns the drift corrections from its own 1/k of the observations (the pessimistic case:
  live shards would share one drift actor and learn from all of them).
* **by tenant**: a tenant's requests all go to one shard (tenants dealt to shards by their load, largest
  first onto the least loaded); quotas and drift statistics stay whole, but the shards' loads are only
  as even as the tenants allow.

Printed: end-to-end p50/p99 per tenant (seconds; an expired request counts as infinitely late, as in
`driftsched simulate`), side by side, per policy.

    python benchmarks/bench_shards.py [--requests 20000] [--replicas 8] [--shards 2] [--load 1.1]
        [--policies fifo,sjf]
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from driftsched.core.config import CoreConfig
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.records import RunRecords, from_simulation
from driftsched.sim.report import policy_summary
from driftsched.sim.simulator import Simulation, core_config_for
from driftsched.sim.workload import Workload, WorkloadItem, paper_workload

Router = Callable[[int, WorkloadItem], int]


def by_request(shards: int) -> Router:
    return lambda i, _item: i % shards


def by_tenant(shards: int, items: Sequence[WorkloadItem]) -> Router:
    """Tenants dealt to shards by request count, largest first onto the least loaded shard."""
    counts = Counter(item.tenant for item in items)
    load, home = [0] * shards, {}
    for tenant, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        shard = load.index(min(load))
        home[tenant], load[shard] = shard, load[shard] + n
    return lambda _i, item: home[item.tenant]


def shard_config(config: CoreConfig, share: dict[str, float]) -> CoreConfig:
    """`config` with each tenant's per-minute quotas cut to its `share` of traffic on this shard."""
    data = config.model_dump()
    for tenant in data["tenants"]:
        part = share.get(tenant["name"], 0.0)
        for quota in ("requests_per_minute", "tokens_per_minute"):
            if tenant.get(quota) is not None and part > 0:
                tenant[quota] *= part
    return CoreConfig.model_validate(data)


def merge(parts: Sequence[RunRecords], policy: str) -> RunRecords:
    """One run's records from its shards' (row order does not matter to the summary)."""
    def cat(name: str) -> Any:
        return np.concatenate([getattr(p, name) for p in parts])

    arrays = ("tenant", "prompt_tokens", "max_tokens", "output_tokens", "arrival", "dispatch",
              "first_token", "finish", "raw_estimate", "corrected_estimate", "admitted")
    return RunRecords(
        policy=policy, category=[c for p in parts for c in p.category],
        status=[s for p in parts for s in p.status], **{name: cat(name) for name in arrays},
        extras={"preemptions": sum(p.extras["preemptions"] for p in parts)},
    )


def run_sharded(workload: Workload, policy: str, perf: PerfModel, config: CoreConfig, replicas: int,
                shards: int, route: Router) -> RunRecords:
    groups: list[list[WorkloadItem]] = [[] for _ in range(shards)]
    for i, item in enumerate(workload.items):
        groups[route(i, item)].append(item)
    totals = Counter(item.tenant for item in workload.items)
    parts = []
    for shard, items in enumerate(groups):
        if not items:
            continue
        mine = Counter(item.tenant for item in items)
        share = {tenant: mine[tenant] / totals[tenant] for tenant in mine}
        sub = replace(workload, items=items)
        size = replicas // shards + (shard < replicas % shards)
        parts.append(from_simulation(Simulation(sub, policy, perf, size, shard_config(config, share)).run()))
    return merge(parts, policy)


def _cell(value: float) -> str:
    return f"{'inf' if math.isinf(value) else f'{value:.1f}':>7}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--load", type=float, default=1.1, help="offered load, x the pool's capacity")
    parser.add_argument("--policies", default="fifo,sjf")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.shards <= args.replicas:
        parser.error(f"--shards must be between 1 and --replicas ({args.replicas}), got {args.shards}")
    perf = PerfModel()
    workload = paper_workload(args.requests, seed=args.seed, replicas=args.replicas, load=args.load)
    config = core_config_for(workload, perf)
    tenants = list(dict.fromkeys(t.name for t in workload.tenants))
    k = args.shards
    columns = {"one scheduler": None, f"{k} shards, by request": by_request(k),
               f"{k} shards, by tenant": by_tenant(k, workload.items)}
    print(f"paper workload: {len(workload.items):,} requests at load {args.load:g} on {args.replicas} "
          f"L4 replicas; end-to-end p50 / p99 seconds per tenant")
    for policy in args.policies.split(","):
        summaries = {}
        for name, route in columns.items():
            if route is None:
                records = from_simulation(Simulation(workload, policy, perf, args.replicas, config).run())
            else:
                records = run_sharded(workload, policy, perf, config, args.replicas, k, route)
            summaries[name] = policy_summary(records)
        print(f"\npolicy {policy}")
        print(f"{'tenant':<16}" + "".join(f"{name:>24}" for name in columns))
        for tenant in [*tenants, "all"]:
            cells = []
            for summary in summaries.values():
                e2e = summary["e2e_s"] if tenant == "all" else summary["per_tenant"][tenant]["e2e_s"]
                cells.append(f"{_cell(e2e['p50'])} / {_cell(e2e['p99'])}")
            print(f"{tenant:<16}" + "".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
