"""Estimator accuracy: raw and drift-corrected output-token estimates against a group oracle.

Replays a workload's requests in arrival order through one `Estimator` built from the workload's
`CoreConfig`: each request is estimated when it arrives, and its true output length is fed back
`--feedback-delay` seconds of workload time later (as if it had finished then), never earlier. The
request's declared `category` is used as is.

Printed per workload: MAE and RMSE (tokens) of the raw estimate, the corrected estimate, and the
group oracle, whose estimate is the true mean output of the request's (tenant, category, phase) group
(`Workload.phases`: before/after `SHIFT_AT` of the run by arrival index for the paper workload, one
phase for a trace). The oracle knows every group's mean in advance; the estimator learns online. Rows for the
second half of the run (by arrival index) are printed too, where the estimator has had time to learn.

    python benchmarks/bench_estimator.py [--seeds 0,1,2] [--requests 20000] [--feedback-delay 30]
        [--trace /work/shared/traces/azure2023_conv.csv | --trace none]
"""

from __future__ import annotations

import argparse
import heapq
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from driftsched.core.estimator import Estimate, Estimator
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.simulator import core_config_for
from driftsched.sim.traces import ReplayOptions, load_azure_conv
from driftsched.sim.workload import Workload, paper_workload

DEFAULT_TRACE = Path(__file__).resolve().parents[1].parent / "shared/traces/azure2023_conv.csv"


def replay(workload: Workload, delay_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(raw, corrected) estimates per item, learning from items finished `delay_s` after arrival."""
    config = core_config_for(workload, PerfModel())
    estimator = Estimator(config.estimator, config.tenant_map())
    items = workload.items
    raw, corrected = np.zeros(len(items)), np.zeros(len(items))
    pending: list[tuple[float, int, Estimate]] = []  # (finish time, index, estimate at arrival)
    for i, it in enumerate(items):
        while pending and pending[0][0] <= it.arrival_s:
            done, j, est = heapq.heappop(pending)
            fin = items[j]
            estimator.observe(fin.tenant, fin.category, est, fin.output_tokens, done)
        est = estimator.estimate(it.tenant, it.category, it.prompt_tokens, it.max_tokens, it.arrival_s)
        raw[i], corrected[i] = est.raw, est.corrected
        heapq.heappush(pending, (it.arrival_s + delay_s, i, est))
    return raw, corrected


def group_oracle(workload: Workload) -> np.ndarray:
    """Each item's (tenant, category, drift phase) true mean output."""
    keys = [(it.tenant, it.category, p) for it, p in zip(workload.items, workload.phases(), strict=True)]
    sums: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key, it in zip(keys, workload.items, strict=True):
        sums[key][0] += it.output_tokens
        sums[key][1] += 1
    return np.array([sums[k][0] / sums[k][1] for k in keys])


def report(name: str, workload: Workload, delay_s: float) -> None:
    started = time.perf_counter()
    raw, corrected = replay(workload, delay_s)
    wall = time.perf_counter() - started
    truth = np.array([it.output_tokens for it in workload.items], dtype=float)
    oracle = group_oracle(workload)
    half = len(truth) // 2
    print(f"\n{name}: {len(truth)} requests, feedback delay {delay_s:g} s, replay {wall:.1f} s")
    print(f"  {'rows':<12}{'estimate':<11}{'MAE':>8}{'RMSE':>8}{'MAE/oracle':>12}{'RMSE/oracle':>13}")
    for rows, sel in (("all", slice(None)), ("second half", slice(half, None))):
        o_mae, o_rmse = _mae(oracle[sel], truth[sel]), _rmse(oracle[sel], truth[sel])
        for label, est in (("raw", raw), ("corrected", corrected), ("oracle", oracle)):
            mae, rmse = _mae(est[sel], truth[sel]), _rmse(est[sel], truth[sel])
            print(f"  {rows:<12}{label:<11}{mae:8.1f}{rmse:8.1f}{mae / o_mae:12.3f}{rmse / o_rmse:13.3f}")


def _mae(est: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(est - truth)))


def _rmse(est: np.ndarray, truth: np.ndarray) -> float:
    return math.sqrt(float(np.mean((est - truth) ** 2)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="paper workload seeds (default 0,1,2)")
    parser.add_argument("--requests", type=int, default=20000, help="paper workload size (default 20000)")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--load", type=float, default=1.0)
    parser.add_argument(
        "--feedback-delay",
        type=float,
        default=30.0,
        help="workload seconds from arrival until the observation is fed back (default 30)",
    )
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="Azure 2023 conv trace, or 'none'")
    parser.add_argument("--trace-seed", type=int, default=0, help="seed of the trace's tenant draw")
    args = parser.parse_args(argv)
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        workload = paper_workload(args.requests, seed=seed, replicas=args.replicas, load=args.load)
        report(f"paper seed={seed}", workload, args.feedback_delay)
    if args.trace != "none":
        opts = ReplayOptions(seed=args.trace_seed, category="prompt_band")
        workload = load_azure_conv(args.trace, opts)
        report(f"azure conv ({Path(args.trace).name}, prompt_band)", workload, args.feedback_delay)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
