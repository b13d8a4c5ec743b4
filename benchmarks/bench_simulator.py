"""Simulator throughput: simulated requests per wall-clock second, per policy and offered load.

Runs `Simulation` on `paper_workload(n, seed=0, replicas=4, load=L)` with the L4 performance model and
`core_config_for`, and prints requests simulated per wall second (workload generation excluded). Each
cell is the best of ``--repeat`` runs, since wall time on a shared machine only ever gets worse.

    python benchmarks/bench_simulator.py [--requests 50000] [--loads 0.7,1.0] [--policies fifo,sjf]
"""

from __future__ import annotations

import argparse
import time

from driftsched.sim.perf_model import PerfModel
from driftsched.sim.simulator import Simulation, core_config_for
from driftsched.sim.workload import paper_workload

REPLICAS = 4


def requests_per_second(policy: str, load: float, num_requests: int, repeat: int) -> float:
    perf = PerfModel()
    workload = paper_workload(num_requests, seed=0, replicas=REPLICAS, load=load)
    config = core_config_for(workload, perf)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        Simulation(workload, policy, perf, REPLICAS, config).run()
        best = min(best, time.perf_counter() - start)
    return len(workload.items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per workload")
    parser.add_argument("--loads", default="0.7,1.0", help="offered loads, comma-separated")
    parser.add_argument("--policies", default="fifo,sjf", help="policies, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest counts")
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    policies = args.policies.split(",")
    print(f"simulated requests / wall s ({args.requests} requests, {REPLICAS} replicas, paper workload)")
    header = f"{'policy':<10}" + "".join(f"{'load ' + str(load):>14}" for load in loads)
    print(header)
    print("-" * len(header))
    for policy in policies:
        cells = [requests_per_second(policy, load, args.requests, args.repeat) for load in loads]
        print(f"{policy:<10}" + "".join(f"{c:>14,.0f}" for c in cells))


if __name__ == "__main__":
    main()
