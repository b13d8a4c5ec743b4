"""benchmarks/bench_shards.py: routing, quota split and merge of a sharded simulation."""

from __future__ import annotations

from collections import Counter

import numpy as np

from benchmarks import bench_shards
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.records import from_simulation
from driftsched.sim.simulator import Simulation, core_config_for
from driftsched.sim.workload import paper_workload

PERF = PerfModel()
WORKLOAD = paper_workload(400, seed=3, replicas=2, load=1.0)
CONFIG = core_config_for(WORKLOAD, PERF)


def test_one_shard_is_the_unsharded_run_request_for_request():
    # The sharding harness itself must not change anything: one shard is the plain simulation.
    plain = from_simulation(Simulation(WORKLOAD, "sjf", PERF, 2, CONFIG).run())
    one = bench_shards.run_sharded(WORKLOAD, "sjf", PERF, CONFIG, 2, 1, bench_shards.by_request(1))
    np.testing.assert_array_equal(one.finish, plain.finish)
    assert one.status == plain.status


def test_two_shards_serve_every_request_once_and_keep_each_tenant_whole_when_routed_by_tenant():
    route = bench_shards.by_tenant(2, WORKLOAD.items)
    homes = {t: {route(i, it) for i, it in enumerate(WORKLOAD.items) if it.tenant == t}
             for t in {it.tenant for it in WORKLOAD.items}}
    assert all(len(shards) == 1 for shards in homes.values())
    assert {next(iter(s)) for s in homes.values()} == {0, 1}
    merged = bench_shards.run_sharded(WORKLOAD, "fifo", PERF, CONFIG, 2, 2, route)
    assert sorted(merged.arrival.tolist()) == sorted(it.arrival_s for it in WORKLOAD.items)
    assert Counter(merged.tenant.tolist()) == Counter(it.tenant for it in WORKLOAD.items)


def test_a_shard_gets_its_share_of_every_per_minute_quota():
    limited = [t for t in CONFIG.tenants if t.requests_per_minute is not None]
    assert limited, "the paper workload has a rate-limited tenant"
    half = bench_shards.shard_config(CONFIG, {t.name: 0.5 for t in CONFIG.tenants})
    for tenant in limited:
        assert half.tenant_map()[tenant.name].requests_per_minute == tenant.requests_per_minute / 2
