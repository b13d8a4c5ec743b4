"""Scheduler throughput: submit + dispatch with a deep backlog, per policy.

Prints operations per second (one submit or one dispatch = one operation) at several queue depths,
at three levels: the bare policy (add/pop of ready tickets), the scheduler given tickets
(`admit` + `dispatch`: admission, quotas, accounting) and the full path from a `Request`
(`submit` + `dispatch`: validation, classification, estimation with drift correction too).
Flat figures across depths show the O(log n) cost per operation.

    python benchmarks/bench_scheduler.py [--depths 1000,10000,100000] [--ops 100000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from driftsched.core.clock import ManualClock
from driftsched.core.config import CATEGORIES, CoreConfig, TenantConfig
from driftsched.core.request import Request, Ticket
from driftsched.core.scheduler import Scheduler
from policies import POLICIES, make_policy

TENANTS = [TenantConfig(name=f"t{i}", tier=i % 4, weight=1 + i % 3, max_queued=10**7) for i in range(8)]
CONFIG = CoreConfig.model_validate(
    {"tenants": [t.model_dump() for t in TENANTS], "scheduler": {"max_queued_total": 10**7}}
)


def make_requests(n: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    return [
        Request(
            f"q{seed}-{i}",
            f"t{rng.randrange(8)}",
            rng.randint(10, 3000),
            rng.choice((64, 512, 2048)),
            arrival_time=0.0,
            category=rng.choice(CATEGORIES),
        )
        for i in range(n)
    ]


def make_tickets(n: int, seed: int) -> list[Ticket]:
    rng = random.Random(seed)
    return [
        Ticket(
            f"k{seed}-{i}",
            f"t{i % 8}",
            i % 4,
            1 + i % 3,
            "chat",
            rng.randint(10, 3000),
            2048,
            e := rng.uniform(1, 2000),
            e,
            float(i),
            seed * 10**7 + i,
        )
        for i in range(n)
    ]


def timed(pairs: int, step: Callable[[int], None]) -> float:
    start = time.perf_counter()
    for i in range(pairs):
        step(i)
    return 2 * pairs / (time.perf_counter() - start)


def bench_policy(name: str, depth: int, pairs: int) -> float:
    policy = make_policy(name)
    for t in make_tickets(depth, 1):
        policy.add(t, 0.0)
    fresh = make_tickets(pairs, 2)

    def step(i: int) -> None:
        policy.add(fresh[i], 0.0)
        policy.pop(0.0)

    return timed(pairs, step)


def bench_scheduler(name: str, depth: int, pairs: int, full: bool) -> float:
    sched = Scheduler(CONFIG, make_policy(name), ManualClock())
    for r in make_requests(depth, 1):
        sched.submit(r)
    if full:
        requests = make_requests(pairs, 2)

        def step(i: int) -> None:
            sched.submit(requests[i])
            sched.dispatch()
    else:
        tickets = make_tickets(pairs, 2)

        def step(i: int) -> None:
            sched.admit(tickets[i])
            sched.dispatch()

    return timed(pairs, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1000,10000,100000")
    parser.add_argument("--ops", type=int, default=100_000, help="operations per measurement")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    pairs = args.ops // 2
    print(f"ops/s (submit + dispatch, {args.ops} operations per cell), by queued requests")
    header = f"{'policy':<10} {'level':<10}" + "".join(f"{d:>12,}" for d in depths)
    print(header)
    print("-" * len(header))
    for name in sorted(POLICIES):
        for level in ("policy", "admit", "submit"):
            cells = []
            for depth in depths:
                if level == "policy":
                    rate = bench_policy(name, depth, pairs)
                else:
                    rate = bench_scheduler(name, depth, pairs, full=level == "submit")
                cells.append(rate)
            print(f"{name:<10} {level:<10}" + "".join(f"{c:>12,.0f}" for c in cells))


if __name__ == "__main__":
    main()
