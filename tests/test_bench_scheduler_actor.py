"""benchmarks/bench_scheduler_actor.py in-process: the backlog stays queued while the callers are granted,
directly and through batching clients."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    import bench_scheduler_actor as bench
finally:
    sys.path.pop(0)


def test_callers_are_granted_past_a_backlog_that_never_moves():
    args = argparse.Namespace(policy="sjf", replicas=4, slots=2, callers=[1, 3], duration=0.2,
                              profile=False, park_over_ray=False, floor=False, clients=2,
                              only_batched=False)
    config = bench.core_config(args.policy, 200)

    async def run() -> tuple[list[bench.Cell], dict[str, int]]:
        actor = bench.BenchSchedulerActor(config, 1e9)
        cells = await bench.measure(actor, bench._await, args, bench.Tickets(config), 200,
                                    bench.LocalHandle(actor))
        return cells, await actor.table_sizes()

    cells, sizes = asyncio.run(run())  # `measure` raises if the backlog moved or a grant leaked
    assert [(c.callers, c.path) for c in cells] == [(1, "direct"), (1, "batched x2"), (3, "direct"),
                                                     (3, "batched x2")]
    assert all(c.grants > 0 and len(c.latencies) == c.grants for c in cells)
    assert all(c.calls > 0 for c in cells if c.path != "direct")  # the clients' calls are counted
    assert sizes["core_queued"] == 0 and sizes["waiters"] == 0  # unparked at the end
    assert sizes["routes"] == sizes["outbox_answers"] == 0
