"""Queue-aware autoscaling core: the backlog meter and the scaler's decisions (no Ray)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from driftsched.core.autoscale import AutoscaleConfig, QueueAwareScaler
from driftsched.core.backlog import Backlog, BacklogMeter, TierBacklog
from driftsched.core.config import AdmissionConfig
from driftsched.core.placement import MIN_RATE_S, Capacity, Placement
from driftsched.core.risk import RiskModel
from tests.factories import make_config, make_ticket

MU = 1000.0  # tokens/s of one replica in these tests


def config(**fields: object) -> AutoscaleConfig:
    base: dict[str, object] = {"enabled": True, "min_replicas": 1, "max_replicas": 8,
                               "upscale_delay_s": 5.0, "downscale_delay_s": 60.0, "prior_tokens_per_s": MU,
                               "min_budget_s": 1.0}
    return AutoscaleConfig.model_validate({**base, **fields})


def backlog(rate: float = 0.0, queued_tokens: float = 0.0, tiers: tuple[TierBacklog, ...] = (),
            mu: float = MU, measured_s: float = 1e9) -> Backlog:
    """A backlog whose measured service rate is `mu` over `measured_s` saturated replica-seconds."""
    queued = sum(t.queued for t in tiers) or (1 if queued_tokens else 0)
    return Backlog(time=0.0, queued=queued, queued_tokens=queued_tokens, in_flight=0, replicas=1,
                   arrival_tokens_per_s=rate, served_tokens=mu * measured_s,
                   saturated_replica_s=measured_s, tiers=tiers)


# -- the meter --------------------------------------------------------------------------------


def test_meter_arrival_rate_is_tokens_over_the_window() -> None:
    meter = BacklogMeter({})
    for i in range(100):  # 100 tokens every 0.1 s: 1000 tokens/s
        meter.admitted(i * 0.1, 100.0)
    assert meter.backlog(10.0, [], 0, 1, window_s=5.0).arrival_tokens_per_s == pytest.approx(1000, rel=0.05)
    assert meter.backlog(30.0, [], 0, 1, window_s=5.0).arrival_tokens_per_s == 0.0


def test_meter_stays_bounded_when_nobody_reads_it() -> None:
    meter = BacklogMeter({})  # autoscaling off: the scheduler feeds the meter, nothing reads it
    for i in range(20_000):  # 1 admission per second for 20,000 s
        meter.admitted(float(i), 10.0)
    assert len(meter._arrivals) <= 601
    # the widest window a read may ask for still sees every admission in it
    assert meter.backlog(20_000.0, [], 0, 1, window_s=600).arrival_tokens_per_s == pytest.approx(10, rel=0.01)


def test_meter_reports_the_schedulers_service_rate_for_the_scaler_to_blend() -> None:
    """The scaler reads the rate SLO admission divides by (`ServiceRate`, tested with the risk
    model): its sums, so the scaler can weigh them against its prior. No risk model: none measured."""
    meter = BacklogMeter({})
    unmeasured = meter.backlog(1.0, [], 0, 2)
    assert (unmeasured.served_tokens, unmeasured.saturated_replica_s) == (0, 0)
    risk = RiskModel(AdmissionConfig(), {})
    risk.rate.set_replicas(0.0, 2)
    risk.rate.advance(0.0, saturated=True)
    for t in range(1, 11):
        risk.rate.completed(float(t), 1000)  # 1000 tokens/s from 2 replicas: 500 each
    summary = meter.backlog(10.0, [make_ticket(1)], 4, 2, risk=risk)
    assert summary.saturated_replica_s == pytest.approx(20, rel=0.1)
    assert summary.served_tokens / summary.saturated_replica_s == pytest.approx(500, rel=0.02)
    scaler = QueueAwareScaler(config(prior_tokens_per_s=MU, prior_replica_s=summary.saturated_replica_s))
    assert scaler.service_rate(summary) == pytest.approx((MU + 500) / 2, rel=0.02)


def test_meter_groups_queued_work_by_tier_with_the_tightest_objective() -> None:
    meter = BacklogMeter({"gold": 10.0, "silver": 4.0, "bronze": None})
    queue = [make_ticket(1, "gold", tier=0, estimate=100), make_ticket(2, "silver", tier=0, estimate=50),
             make_ticket(3, "bronze", tier=2, estimate=300)]
    queue[0].queued_at, queue[1].queued_at, queue[2].queued_at = 1.0, 3.0, 2.0
    summary = meter.backlog(5.0, queue, 0, 1)
    assert summary.queued == 3 and summary.queued_tokens == pytest.approx(450)
    assert summary.tiers == (TierBacklog(0, 2, 150.0, 4.0, 4.0), TierBacklog(2, 1, 300.0, 3.0, None))


# -- the scaler -------------------------------------------------------------------------------


def test_demand_adds_the_steady_rate_and_the_backlog_drain() -> None:
    scaler = QueueAwareScaler(config(target_utilization=0.5, drain_s=10.0))
    raw, reason = scaler.demand(backlog(rate=1000.0, queued_tokens=20_000))
    assert raw == pytest.approx(1000 / (MU * 0.5) + 20_000 / (MU * 10))
    assert reason == "backlog"
    assert scaler.demand(backlog(rate=500.0)) == (pytest.approx(1.0), "steady")
    assert scaler.demand(backlog()) == (0.0, "idle")


def test_prior_service_rate_blends_into_the_measurement() -> None:
    scaler = QueueAwareScaler(config(prior_tokens_per_s=500.0, prior_replica_s=60.0, target_utilization=1.0))
    assert scaler.demand(backlog(rate=1000.0, measured_s=0.0))[0] == pytest.approx(2.0)
    # 60 replica-seconds at 2000 tokens/s weigh as much as the prior: mu = 1250
    assert scaler.service_rate(backlog(mu=2000.0, measured_s=60.0)) == pytest.approx(1250)
    assert scaler.demand(backlog(rate=1000.0, mu=2000.0))[0] == pytest.approx(0.5)


def test_burst_scales_up_only_after_the_upscale_delay() -> None:
    scaler = QueueAwareScaler(config())
    burst = backlog(rate=2000.0, queued_tokens=150_000)  # 2/0.8 + 150k/30k = 7.5 -> 8
    assert scaler.decide(0.0, burst, 1).replicas == 1
    early = scaler.decide(4.0, burst, 1)
    assert (early.replicas, early.desired) == (1, 8)
    assert scaler.decide(5.0, burst, 1).replicas == 8
    assert scaler.decide(6.0, backlog(rate=50_000.0), 8).replicas == 8, "never above max_replicas"


def test_a_dip_restarts_the_upscale_delay() -> None:
    scaler = QueueAwareScaler(config())
    burst = backlog(queued_tokens=90_000)  # 3 replicas
    scaler.decide(0.0, burst, 1)
    scaler.decide(4.0, backlog(), 1)  # the queue cleared meanwhile
    assert scaler.decide(6.0, burst, 1).replicas == 1
    assert scaler.decide(11.0, burst, 1).replicas == 3


def test_scales_from_zero_at_once_and_decays_to_the_minimum() -> None:
    scaler = QueueAwareScaler(config(min_replicas=0))
    assert scaler.decide(0.0, backlog(queued_tokens=10.0), 0).replicas == 1, "no delay from zero"
    assert scaler.decide(1.0, backlog(), 1).replicas == 1
    assert scaler.decide(60.0, backlog(), 1).replicas == 1
    idle = scaler.decide(61.0, backlog(), 1)
    assert (idle.replicas, idle.reason) == (0, "idle")
    held = QueueAwareScaler(config(min_replicas=2))
    held.decide(0.0, backlog(), 5)
    assert held.decide(60.0, backlog(), 5).replicas == 2


def test_downscale_keeps_the_hysteresis_headroom() -> None:
    scaler = QueueAwareScaler(config(target_utilization=1.0, hysteresis=0.2))
    load = backlog(rate=3100.0)  # 3.1 replicas busy: 4 needed, 3.1/0.8 = 3.9 -> stays at 4
    for t in range(0, 300, 10):
        assert scaler.decide(float(t), load, 4).replicas == 4
    lighter = backlog(rate=2300.0)  # 2.3/0.8 = 2.9 -> 3 after the delay
    scaler.decide(300.0, lighter, 4)
    assert scaler.decide(360.0, lighter, 4).replicas == 3


def test_no_flapping_under_noisy_steady_load() -> None:
    """A closed loop on steady load with +-20% noise per reading, around a replica boundary: the pool
    grows to cover the noisy peaks, then never changes (no up-down cycles)."""
    rng = random.Random(7)
    scaler = QueueAwareScaler(config(target_utilization=1.0))
    target, changes = 1, []
    for t in range(0, 7200):
        rate = 2900.0 * rng.uniform(0.8, 1.2)  # 2.3 .. 3.5 replicas' worth
        queue = max(0.0, (rate - target * MU)) * 2  # what the shortfall piles up in a couple of seconds
        decision = scaler.decide(float(t), backlog(rate=rate, queued_tokens=queue), target)
        if decision.replicas != target:
            changes.append((t, target, decision.replicas))
            target = decision.replicas
    assert target >= 3
    assert len(changes) <= 2, changes
    assert all(new > old for _, old, new in changes), f"only ever up, never back: {changes}"
    assert all(t < 600 for t, _, _ in changes), f"settled within ten minutes: {changes}"


def test_a_tight_tier_objective_scales_earlier_than_the_drain_target() -> None:
    scaler = QueueAwareScaler(config(drain_s=60.0, slo_headroom=0.5, upscale_delay_s=0.0))
    queued = (TierBacklog(0, 5, 2000.0, 1.0, 3.0), TierBacklog(1, 20, 40_000.0, 8.0, None))
    raw, reason = scaler.demand(backlog(queued_tokens=42_000.0, tiers=queued))
    # tier 0: 2000 tokens within max(1, 0.5*3 - 1) = 1 s -> 2 replicas; drain: 42k/60k = 0.7
    assert (raw, reason) == (pytest.approx(2.0), "slo:0")
    assert scaler.decide(0.0, backlog(queued_tokens=42_000.0, tiers=queued), 1).replicas == 2
    slack = (TierBacklog(0, 5, 2000.0, 1.0, 60.0), TierBacklog(1, 20, 40_000.0, 8.0, None))
    assert scaler.demand(backlog(queued_tokens=42_000.0, tiers=slack))[1] == "backlog"


def test_a_lower_tier_objective_counts_the_work_ahead_of_it() -> None:
    scaler = QueueAwareScaler(config(slo_headroom=1.0))
    queued = (TierBacklog(0, 1, 3000.0, 0.0, None), TierBacklog(2, 1, 1000.0, 0.0, 2.0))
    assert scaler.demand(backlog(queued_tokens=4000.0, tiers=queued)) == (pytest.approx(2.0), "slo:2")


def test_no_backlog_known_holds_the_target_within_bounds() -> None:
    scaler = QueueAwareScaler(config(min_replicas=2, max_replicas=4))
    assert scaler.decide(0.0, None, 3).replicas == 3
    assert scaler.decide(0.0, None, 1).replicas == 2
    assert scaler.decide(0.0, None, 9).reason == "hold"


@pytest.mark.parametrize(("fields", "message"), [
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas (2) must be >= min_replicas (3)"),
    ({"initial_replicas": 9}, "initial_replicas (9) must lie within min_replicas..max_replicas"),
    ({"target_utilization": 0}, "greater than 0"),
])
def test_config_errors_name_the_fix(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(**fields)


# -- the simulator's replica pool (what benchmarks/bench_autoscale.py drives) -----------------


def test_simulation_adds_and_retires_replicas_mid_run() -> None:
    from driftsched.sim.perf_model import PerfModel
    from driftsched.sim.simulator import Simulation, core_config_for
    from driftsched.sim.workload import paper_workload

    perf = PerfModel(max_num_seqs=16)
    workload = paper_workload(600, seed=1, replicas=2, load=1.0, perf=perf, with_text=False)
    # a deadline no request reaches here (one replica for a while at load 1.0), and no early rejection
    # (the pool is short for a while on purpose): every one finishes
    base = make_config(scheduler={"admission": {"enabled": False}})
    sim = Simulation(workload, "fifo", perf, 1, core_config_for(workload, perf, base), queue_timeout_s=3600.0)
    end = workload.items[-1].arrival_s
    added: list[int] = []
    sim.at(end * 0.2, lambda: added.append(sim.add_replica()))
    sim.at(end * 0.6, lambda: sim.retire_replica(added[0]))
    busy_later: list[float] = []
    sim.at(end * 0.9, lambda: busy_later.append(sim.busy_s[1]))
    result = sim.run()
    assert not np.isnan(result.finish).any(), "every request finished"
    assert sim.active_replicas == [0] and sim.backlog(10.0).replicas == 1
    drained_at = sim.drained_at[1]
    assert drained_at is not None and end * 0.6 <= drained_at < end * 0.9
    assert sim.started_at[1] == pytest.approx(end * 0.2)
    assert result.busy_s[1] > 0, "the added replica served work"
    assert busy_later == [result.busy_s[1]], "a drained replica gets no new work"
    assert sim.drained_at[0] is None


def test_scheduler_grants_only_to_replicas_serve_routes_to() -> None:
    import asyncio

    from deployments.scheduler_actor import AcquireStatus, Release, SchedulerActor, Submission
    from driftsched.core.placement import Capacity

    async def scenario() -> tuple[object, ...]:
        actor = SchedulerActor({"tenants": [{"name": "a"}], "scheduler": {"policy": "fifo"}})
        await actor.report("old", Capacity(4, 4, 20_000, (), 20_000))
        first = (await actor.submit("c", [Submission(make_ticket(1), 5.0)])).results["r1"]
        await actor.backlog(10.0, None, ["new"])  # Serve stops "old" and routes to "new"
        await actor.report("old", Capacity(4, 3, 20_000, ("r1",), 20_000))  # roomier than "new"
        await actor.report("new", Capacity(2, 2, 10_000, (), 10_000))
        second = (await actor.submit("c", [Submission(make_ticket(2), 5.0)])).results["r2"]
        await actor.release_many([Release("r1", "old", 10)])  # what ran on the stopped replica ends
        summary = await actor.backlog(10.0)
        return first, second, summary

    first, second, summary = asyncio.run(scenario())
    assert (first.status, first.replica_id) == (AcquireStatus.GRANTED, "old")
    assert (second.status, second.replica_id) == (AcquireStatus.GRANTED, "new")
    assert summary.in_flight == 1 and summary.queued == 0


def test_queued_prefill_alone_can_set_the_drain_term() -> None:
    """Prompt-heavy queues (long contexts, little output) scale on prefill; the terms are not added."""
    scaler = QueueAwareScaler(AutoscaleConfig(drain_s=60, prior_prefill_tokens_per_s=6000))
    light = replace(backlog(queued_tokens=MU * 60), queued_prefill_tokens=6000 * 30)
    raw, reason = scaler.demand(light)
    assert reason == "backlog" and raw == pytest.approx(1.0)
    heavy = replace(light, queued_prefill_tokens=6000 * 60 * 3)
    raw, reason = scaler.demand(heavy)
    assert reason == "prefill" and raw == pytest.approx(3.0)
    measured = replace(heavy, prefill_tokens_per_s=9000.0)  # the placement's rate replaces the prior
    raw, reason = scaler.demand(measured)
    assert reason == "prefill" and raw == pytest.approx(2.0)


def test_the_placements_prefill_rate_is_its_replicas_mean_measured_else_its_prior() -> None:
    placement = Placement(prefill_tokens_per_s=5000.0)
    assert placement.prefill_rate() is None  # no replica: the autoscaler keeps its own prior
    for r in "ab":
        placement.report(r, Capacity(8, 8, 100_000, (), 100_000), 0.0)
    assert placement.prefill_rate() == pytest.approx(5000.0)
    state = {s.replica_id: s for s in placement.replicas()}
    state["b"].rate_tokens, state["b"].rate_seconds = 9000.0 * MIN_RATE_S, MIN_RATE_S  # b measured
    assert placement.prefill_rate() == pytest.approx(7000.0)
