"""benchmarks/bench_scheduler_actor.py in-process: the backlog stays queued while the callers are granted
through batching clients."""

from __future__ import annotations

import argparse
import asyncio

from benchmarks import bench_scheduler_actor as bench


def test_callers_are_granted_past_a_backlog_that_never_moves():
    args = argparse.Namespace(policy="sjf", replicas=4, slots=2, callers=[1, 3], duration=0.2,
                              profile=False, floor=False, clients=2, queued=[200])
    config = bench.core_config(args.policy, 200)

    async def run() -> tuple[list[bench.Cell], dict[str, int]]:
        actor = bench.BenchSchedulerActor(config, 1e9)
        cells = await bench.measure(actor, bench._await, args, bench.Tickets(config), 200,
                                    bench.LocalHandle(actor))
        return cells, await actor.table_sizes()

    cells, sizes = asyncio.run(run())  # `measure` raises if the backlog moved or a grant leaked
    assert [(c.callers, c.path) for c in cells] == [(1, "batched x2"), (3, "batched x2")]
    assert all(c.grants > 0 and len(c.latencies) == c.grants for c in cells)
    assert all(c.calls > 0 for c in cells)  # the clients' calls are counted
    assert sizes["core_queued"] == 0 and sizes["core_in_flight"] == 0  # the backlog withdrawn at the end
    assert sizes["routes"] == sizes["outbox_answers"] == 0
