"""SLO-aware admission and tier holdback (no Ray): the measured service rate, the work ahead, fair shares,
early rejection that never sheds a request that could still make its objective, the holdback at
admission and at dispatch, the autoscaler's risk term, and the scheduler actor's answers.

The constructed cases run the real `Scheduler` against a *fluid pool*: one server that serves the
scheduler's dispatch order at exactly ``MU`` output tokens/s, one request at a time, each producing its
estimate. There a request's true wait is known, so "could it still have made its objective" is a fact
to compare admission with, not a model.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from factories import make_config, make_ticket
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.scheduler_actor import AcquireStatus, Release, SchedulerActor, Submission
from driftsched.core.admission import admission_for
from driftsched.core.autoscale import AutoscaleConfig, QueueAwareScaler
from driftsched.core.backlog import Backlog, BacklogMeter, TierBacklog
from driftsched.core.clock import ManualClock
from driftsched.core.config import AdmissionConfig, TenantConfig
from driftsched.core.placement import Capacity
from driftsched.core.request import RejectReason, Ticket
from driftsched.core.risk import SETTLE_S, DemandMeter, QueuedWork, ServiceRate
from driftsched.core.scheduler import Scheduler
from policies import make_policy
from policies.fifo import FifoPolicy
from serve_app.errors import ERRORS, ErrorCode, acquire_error, reject_error

MU = 1000.0  # output tokens/s of the fluid pool
TTFT = 1.5  # tier 0's objective


def ticket(i: int, tenant: str, tier: int, work: float, now: float, ttft_s: float = TTFT) -> Ticket:
    t = make_ticket(i, tenant=tenant, tier=tier, estimate=work, arrival=now)
    t.ttft_slo_s = ttft_s
    return t


@dataclass(frozen=True)
class Arrival:
    time: float
    tenant: str
    tier: int
    work: float
    ttft_s: float = TTFT


def steady(tenant: str, tier: int, work: float, every_s: float, start: float, end: float,
           ttft_s: float = TTFT) -> list[Arrival]:
    n = round((end - start) / every_s)
    return [Arrival(start + k * every_s, tenant, tier, work, ttft_s) for k in range(n)]


TENANTS = (TenantConfig(name="batch", tier=3), TenantConfig(name="burst", tier=0),
           TenantConfig(name="steady", tier=0), TenantConfig(name="bulk", tier=3),
           TenantConfig(name="chat", tier=0))


def scheduler(policy: str = "fifo", clock: ManualClock | None = None, **admission: Any) -> Scheduler:
    config = make_config(*TENANTS, scheduler={"admission": admission})
    return Scheduler(config, make_policy(policy), clock or ManualClock())


@dataclass
class FluidRun:
    sched: Scheduler
    clock: ManualClock
    waits: dict[str, float]  # request id -> wait until dispatch
    refused: dict[str, tuple[RejectReason, float | None]]  # request id -> (reason, retry after)
    arrivals: dict[str, Arrival]


def fluid(arrivals: list[Arrival], sched: Scheduler | None = None, clock: ManualClock | None = None,
          first_id: int = 0, **admission: Any) -> FluidRun:
    """Run `arrivals` through the scheduler with the fluid pool (module docstring) until all is served."""
    clock = clock or ManualClock()
    sched = sched or scheduler(clock=clock, **admission)
    run = FluidRun(sched, clock, {}, {}, {})
    running: tuple[Ticket, float] | None = None
    events = sorted(arrivals, key=lambda a: a.time)
    i = 0

    def start() -> tuple[Ticket, float] | None:
        t = sched.dispatch()
        if t is None:
            return None
        run.waits[t.request_id] = clock.now - t.arrival_time
        return t, clock.now + t.corrected_estimate / MU

    while i < len(events) or running is not None:
        next_arrival = events[i].time if i < len(events) else math.inf
        if running is not None and running[1] <= next_arrival:
            clock.now = running[1]
            sched.complete(running[0].request_id, int(running[0].corrected_estimate))
            running = start()
            continue
        a = events[i]
        clock.now = max(clock.now, a.time)
        t = ticket(first_id + i, a.tenant, a.tier, a.work, clock.now, a.ttft_s)
        run.arrivals[t.request_id] = a
        admission_ = sched.admit(t)
        if not admission_.admitted:
            assert admission_.reason is not None
            run.refused[t.request_id] = (admission_.reason, admission_.retry_after_s)
        i += 1
        if running is None:
            running = start()
    return run


# A warm-up in which tenant bulk saturates the pool for ~45 s (1.5x its rate, tier 3, a loose
# objective): the scheduler measures the rate there, and bulk is far above its share for a while after.
WARM = steady("bulk", 3, 600.0, 0.4, 0.0, 30.0, ttft_s=600.0)


def warm(policy: str = "fifo", **admission: Any) -> FluidRun:
    clock = ManualClock()
    run = fluid(WARM, scheduler(policy, clock, **admission), clock)
    rate = run.sched.risk.pool_rate()
    assert rate is not None and rate == pytest.approx(MU, rel=0.1)
    return run


def spike(run: FluidRun, tenant: str) -> None:
    """`tenant` asks for 100 s of the pool's work at once (tier 9, no objective): far above its share."""
    big = make_ticket(9000, tenant=tenant, tier=9, estimate=100 * MU, arrival=run.clock.now)
    assert run.sched.admit(big).admitted
    assert run.sched.risk.over_share(tenant, run.clock.now)


# -- the measurement ------------------------------------------------------------------------------


def test_without_progress_readings_the_rate_counts_completions_while_work_waits() -> None:
    rate = ServiceRate(half_life_s=60.0)
    rate.advance(0.0, saturated=False)
    rate.completed(5.0, 10_000)  # no queue: that is demand, not capacity
    assert rate.per_replica() is None
    rate.advance(10.0, saturated=True)
    for k in range(1, 21):
        rate.completed(10.0 + k, 500)  # 500 tokens/s while work waits
    assert rate.pool() == pytest.approx(500, rel=0.02)
    assert rate.pool(min_measured_s=60.0) is None  # not measured long enough for that
    rate.advance(30.0, saturated=False)
    rate.advance(5000.0, saturated=False)  # an idle spell ages nothing: the hardware's speed stays known
    assert rate.pool() == pytest.approx(500, rel=0.02)


def test_rate_counts_tokens_as_they_are_generated_while_the_pool_is_saturated() -> None:
    # Long requests generate 500 tokens/s throughout; the pool is saturated from 10 s to 20 s and no
    # request completes then. Counted by completions that spell would read nothing; by progress, it
    # reads the pace. The unsaturated parts of the readings' intervals are not credited.
    rate = ServiceRate(half_life_s=60.0)
    for t in range(31):
        rate.advance(float(t), saturated=10 <= t < 20)
        rate.generated(float(t), 500.0 * t)
    assert rate.pool() == pytest.approx(500, rel=0.02)
    rate.completed(35.0, 500.0 * 35)  # they all finish, unsaturated: demand, not capacity
    rate.generated(40.0, 0.0)
    assert rate.pool() == pytest.approx(500, rel=0.02)
    rate.advance(40.0, saturated=True)  # saturated again, and the running requests were dropped
    rate.generated(42.0, 0.0)  # (preempted or their replica lost): nothing is credited for them
    assert rate.pool() == pytest.approx(500 * 10 / 12, rel=0.02)


def test_rate_is_per_replica_and_a_new_replica_settles_before_it_is_sampled() -> None:
    rate = ServiceRate(half_life_s=60.0)
    rate.set_replicas(0.0, 2)  # the first count given: no settling
    rate.advance(0.0, saturated=True)
    for k in range(1, 31):
        rate.completed(float(k), 1000)  # 1000 tokens/s from 2 replicas
    assert rate.pool() == pytest.approx(1000, rel=0.02)
    rate.set_replicas(30.0, 4)
    assert rate.pool() == pytest.approx(2000, rel=0.02)  # the new count at once: a shorter wait
    for k in range(31, 31 + int(SETTLE_S) - 1):
        rate.completed(float(k), 10)  # warming up: prefilling a full batch, few completions
    assert rate.pool() == pytest.approx(2000, rel=0.02)  # not sampled while settling
    rate.set_replicas(61.0, 0)
    assert rate.pool() is None  # no replica: nothing promised, nothing refused for it


def test_fair_share_is_weighted_max_min() -> None:
    meter = DemandMeter({"a": 1.0, "b": 1.0, "c": 2.0}, half_life_s=60.0)
    for k in range(600):  # a: 10, b: 80, c: 80 tokens/s for 600 s
        meter.offered("a", float(k), 10.0)
        meter.offered("b", float(k), 80.0)
        meter.offered("c", float(k), 80.0)
    shares = meter.shares(600.0, capacity=100.0)
    assert shares["a"].offered == pytest.approx(10, rel=0.05)
    # a asks for less than its quarter: the rest goes to b and c by weight (30 and 60)
    assert (shares["a"].fair, shares["b"].fair, shares["c"].fair) == pytest.approx((10, 30, 60), rel=0.05)
    assert [name for name, s in shares.items() if s.over(0.1)] == ["c", "b"]
    roomy = meter.shares(600.0, capacity=200.0)  # all the demand fits: nobody is above its share
    assert not any(s.over(0.1) for s in roomy.values())


@st.composite
def queue_ops(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    now = 0.0
    for i in range(draw(st.integers(1, 40))):
        now += draw(st.floats(0.0, 3.0))
        kind = draw(st.sampled_from(["add", "add", "add", "resume", "remove", "query"]))
        if kind in ("add", "resume"):
            back = draw(st.floats(0.0, 5.0)) if draw(st.booleans()) else 0.0  # some arrive out of order
            objective = draw(st.sampled_from([1.5, 5.0, 30.0]))
            ops.append((kind, (i, draw(st.sampled_from("ab")), draw(st.integers(0, 3)),
                               draw(st.floats(1.0, 500.0)), now - back, objective)))
        elif kind == "remove":
            ops.append((kind, draw(st.integers(0, 40))))
        else:
            ops.append((kind, (now, draw(st.integers(0, 3)), now + draw(st.floats(0.0, 40.0)))))
    return ops


@given(queue_ops())
@settings(max_examples=200, deadline=None)
def test_work_ahead_is_the_on_time_work_of_tiers_as_important_due_no_later(ops: list[tuple[str, Any]]) -> None:  # noqa: E501
    queued = QueuedWork()
    live: dict[int, tuple[Ticket, bool]] = {}
    for kind, arg in ops:
        if kind in ("add", "resume"):
            i, tenant, tier, work, arrival, ttft_s = arg
            t = make_ticket(i, tenant=tenant, tier=tier, estimate=work, arrival=arrival)
            t.ttft_slo_s = ttft_s
            queued.add(t, resumed=kind == "resume")
            live[i] = (t, kind == "resume")
        elif kind == "remove":
            if arg in live:
                queued.remove(live.pop(arg)[0])
        else:
            now, tier, deadline = arg
            front = sum(t.remaining_estimate for t, resumed in live.values() if resumed)
            by_tenant = {tenant: sum(
                t.remaining_estimate for t, resumed in live.values()
                if not resumed and t.tenant == tenant and t.tier <= tier and now < t.ttft_deadline <= deadline
            ) for tenant in "ab"}
            total = front + sum(by_tenant.values())
            assert queued.ahead(tier, deadline, now) == pytest.approx(total, abs=1e-6)
            got_front, got = queued.ahead_by_tenant(tier, deadline, now)
            assert got_front == pytest.approx(front, abs=1e-6)
            assert {k: got.get(k, 0.0) for k in "ab"} == pytest.approx(by_tenant, abs=1e-6)
            urgent = queued.most_urgent(tier, now)
            on_time = [t for t, resumed in live.values()
                       if not resumed and t.tier == tier and t.ttft_deadline > now]
            assert (urgent.ttft_deadline if urgent else None) == (
                min(t.ttft_deadline for t in on_time) if on_time else None)


# -- early rejection --------------------------------------------------------------------------------


def test_nothing_is_refused_before_the_rate_is_measured() -> None:
    clock = ManualClock()
    sched = scheduler(clock=clock)
    for i in range(100):  # 50 s of work ahead, and nothing measured
        assert sched.admit(ticket(i, "burst", 0, 500.0, 0.0)).admitted
    assert sched.admit(ticket(100, "burst", 0, 500.0, 0.0)).admitted


# The burst tenant sends 2.5x the pool's rate for 20 s at tier 0 (its objective cannot hold for most of
# it); the steady tenant a trickle at the same tier, well within its share.
OVERLOAD = (WARM + steady("burst", 0, 250.0, 0.1, 50.0, 70.0)
            + steady("steady", 0, 100.0, 2.0, 40.0, 100.0))


def test_early_rejection_never_sheds_a_request_that_could_still_make_its_objective() -> None:
    # The holdback (fair-share enforcement, tested below) is off: this is early rejection alone.
    on = fluid(OVERLOAD, holdback=False)
    off = fluid(OVERLOAD, enabled=False)
    assert not off.refused
    shed = {rid for rid, (reason, _) in on.refused.items()}
    assert len(shed) > 50, "the hopeless part of the burst is shed"
    for rid in shed:  # every one of them would have waited past its objective had it been admitted
        assert off.waits[rid] > on.arrivals[rid].ttft_s, rid


@pytest.mark.parametrize("tenant", ["bulk", "steady"])  # above its share, and within it
@pytest.mark.parametrize("requests_ahead", [0, 1, 2, 3])
def test_a_request_with_at_most_its_objective_of_work_ahead_is_admitted(tenant: str, requests_ahead: int) -> None:  # noqa: E501
    # Early rejection alone (the holdback refuses demand above a share, whatever the request's chances).
    run = warm("priority", holdback=False)  # tier order: the fluid pool serves the work ahead, then it
    sched, clock = run.sched, run.clock
    clock.now = 50.0
    spike(run, "bulk")
    for i in range(requests_ahead):  # up to 1.5 s of work at 1000 tokens/s: its objective exactly
        assert sched.admit(ticket(1000 + i, tenant, 0, 500.0, clock.now)).admitted
    assert sched.risk.over_share("bulk", clock.now) and not sched.risk.over_share("steady", clock.now)
    # the fluid pool would dispatch it within 1.5 s, its objective: admitted, whoever sends it
    assert sched.admit(ticket(2000, tenant, 0, 500.0, clock.now)).admitted


def fill_then_lose_replicas(run: FluidRun, tenant: str) -> float:
    """With 4 replicas, `tenant` queues tier-0 work up to what admission lets through (~9 s of the
    single replica's work); then 3 replicas are lost. Returns the work queued, in seconds at MU."""
    sched, clock = run.sched, run.clock
    sched.set_replicas(4)
    queued, i = 0.0, 0
    while sched.admit(ticket(1000 + i, tenant, 0, 500.0, clock.now)).admitted:
        queued, i = queued + 500.0, i + 1
    sched.set_replicas(1)
    return queued / MU


def test_a_hopeless_request_is_shed_at_once_with_a_retry_hint() -> None:
    run = warm("priority", holdback=False)
    run.clock.now = 50.0
    spike(run, "bulk")
    queued_s = fill_then_lose_replicas(run, "bulk")
    assert queued_s == pytest.approx(1.5 * TTFT * 4, abs=0.5)  # the margin's bound, at 4 replicas
    sched, clock = run.sched, run.clock
    admission = sched.admit(ticket(2000, "bulk", 0, 500.0, clock.now))
    assert admission.reason is RejectReason.SLO_UNREACHABLE
    assert "fair share" in admission.detail and "1.5 s" in admission.detail
    # it would wait about 9 s for a first token due in 1.5 s: retry once that much has drained
    assert admission.retry_after_s == pytest.approx(queued_s - TTFT, rel=0.1)
    assert sched.snapshot().counters["bulk"].rejected["slo_unreachable"] >= 1
    # a request with a looser objective behind the same queue is admitted
    assert sched.admit(ticket(2001, "bulk", 0, 500.0, clock.now, ttft_s=60.0)).admitted


def test_a_tenant_within_its_share_is_never_shed_for_another_tenants_burst() -> None:
    run = warm("priority", holdback=False)
    run.clock.now = 50.0
    spike(run, "bulk")
    fill_then_lose_replicas(run, "bulk")
    sched, clock = run.sched, run.clock
    assert sched.admit(ticket(3000, "bulk", 0, 500.0, clock.now)).reason is RejectReason.SLO_UNREACHABLE
    # steady's request waits behind all of it and will miss, but steady is within its share: admitted
    assert not sched.risk.over_share("steady", clock.now)
    assert sched.admit(ticket(3001, "steady", 0, 100.0, clock.now)).admitted


def test_a_pool_short_for_the_tenants_within_their_share_answers_503() -> None:
    run = warm("priority", holdback=False)
    run.clock.now = 300.0
    queued_s = fill_then_lose_replicas(run, "steady")  # its demand over the window stays small
    sched, clock = run.sched, run.clock
    assert not sched.risk.over_share("steady", clock.now)
    admission = sched.admit(ticket(2000, "steady", 0, 500.0, clock.now))
    assert admission.reason is RejectReason.SYSTEM_SLO_UNREACHABLE
    assert "pool is short" in admission.detail
    assert admission.retry_after_s == pytest.approx(queued_s - TTFT, rel=0.1)


def test_admission_off_in_the_config_or_for_a_policy_that_declares_it() -> None:
    run = warm(enabled=False)
    sched, clock = run.sched, run.clock
    for i in range(60):
        assert sched.admit(ticket(1000 + i, "burst", 0, 500.0, clock.now)).admitted

    class PeerFifo(FifoPolicy):
        admission: ClassVar[dict[str, bool]] = {"enabled": False}

    assert not admission_for(PeerFifo(), AdmissionConfig()).enabled
    assert admission_for(FifoPolicy(), AdmissionConfig(shed_margin=2.0)).shed_margin == 2.0
    peer = Scheduler(make_config(*TENANTS), PeerFifo(), ManualClock())
    assert peer.risk.config.enabled is False and not peer._holdback


# -- holdback ----------------------------------------------------------------------------------------


def queued_bulk(sched: Scheduler, clock: ManualClock, n: int = 10, work: float = 20_000.0) -> None:
    """Tenant bulk (tier 3) queues `n` large requests: far above its share of a 1000 tokens/s pool."""
    for i in range(n):
        assert sched.admit(ticket(5000 + i, "bulk", 3, work, clock.now, ttft_s=600.0)).admitted


def test_dispatch_serves_a_tier_at_risk_before_a_less_important_head_above_its_share() -> None:
    run = warm()
    sched, clock = run.sched, run.clock
    clock.now = 100.0
    queued_bulk(sched, clock)
    assert sched.risk.over_share("bulk", clock.now)
    chat = ticket(6000, "chat", 0, 100.0, clock.now)
    assert sched.admit(chat).admitted
    assert sched.peek() is not chat  # FIFO: bulk's first request is the head; chat not at risk yet
    clock.advance(0.8)  # chat has waited more than half its 1.5 s objective: tier 0 is at risk
    assert sched.peek() is chat and sched.dispatch() is chat
    assert sched.peek().tenant == "bulk"  # nothing else at risk: the policy's order again


def test_no_holdback_for_a_head_within_its_share_or_below_the_lower_tiers_reserve() -> None:
    run = warm()
    sched, clock = run.sched, run.clock
    clock.now = 100.0
    sched.admit(ticket(5000, "bulk", 3, 500.0, clock.now, ttft_s=600.0))  # one request: within its share
    chat = ticket(6000, "chat", 0, 100.0, clock.now)
    sched.admit(chat)
    clock.advance(0.8)
    assert not sched.risk.over_share("bulk", clock.now)
    assert sched.peek().tenant == "bulk"  # a tier's priority does not take another tenant's share

    run = warm(reserve=0.5)
    sched, clock = run.sched, run.clock
    clock.now = 100.0
    for i in range(3):  # tier 0 holds every running slot
        sched.admit(ticket(7000 + i, "chat", 0, 100.0, clock.now))
        assert sched.dispatch() is not None
    queued_bulk(sched, clock)
    sched.admit(ticket(6000, "chat", 0, 100.0, clock.now))
    clock.advance(0.8)
    assert sched.peek().tenant == "bulk"  # less important tiers below their reserve: the head goes


def test_admission_holds_back_a_tenant_above_its_share_while_a_more_important_tier_would_miss() -> None:
    run = warm()
    sched, clock = run.sched, run.clock
    clock.now = 100.0
    queued_bulk(sched, clock)
    chat = ticket(6000, "chat", 0, 100.0, clock.now)
    sched.admit(chat)
    clock.advance(0.8)  # tier 0 at risk (past half its objective), not projected to miss it
    assert sched.risk.at_risk(0, clock.now) is chat
    assert sched.admit(ticket(6004, "bulk", 3, 500.0, clock.now, ttft_s=600.0)).admitted  # it waits behind
    for i in range(8):  # 0.8 s of tier-0 work due with chat: now projected to miss
        assert sched.admit(ticket(6010 + i, "chat", 0, 100.0, clock.now - 0.8)).admitted
    held = sched.admit(ticket(6001, "bulk", 3, 500.0, clock.now, ttft_s=600.0))
    assert held.reason is RejectReason.TIER_HOLDBACK and held.retry_after_s is not None
    assert "tier 0 is at risk" in held.detail and "fair share" in held.detail
    assert sched.admit(ticket(6002, "batch", 3, 500.0, clock.now, ttft_s=600.0)).admitted  # within share
    assert all(sched.cancel(f"r{6010 + i}") is not None for i in range(8))
    assert sched.dispatch() is chat  # tier 0 served: no tier at risk any more
    assert sched.admit(ticket(6003, "bulk", 3, 500.0, clock.now, ttft_s=600.0)).admitted


# A burst at 2x the pool's rate for 100 s, long enough for the window to see it; steady as before.
LONG_OVERLOAD = (WARM + steady("burst", 0, 250.0, 0.125, 50.0, 150.0)
                 + steady("steady", 0, 100.0, 1.0, 40.0, 160.0))


def test_holdback_holds_a_tenant_above_its_share_to_its_share_and_never_one_within_it() -> None:
    held = fluid(LONG_OVERLOAD)  # its own tier at risk: held from half the objective on
    alone = fluid(LONG_OVERLOAD, holdback=False)  # early rejection alone

    def admitted_per_s(run: FluidRun, tenant: str, start: float, end: float) -> float:
        return sum(a.work for rid, a in run.arrivals.items()
                   if a.tenant == tenant and start <= a.time < end and rid not in run.refused) / (end - start)

    for run in (held, alone):
        assert not any(run.arrivals[rid].tenant == "steady" for rid in run.refused)
    reasons = {reason for reason, _ in held.refused.values()}
    assert RejectReason.TIER_HOLDBACK in reasons
    # once the window sees the burst, it is held to about its share: the pool less steady's 100/s
    share = MU - 100.0
    assert 0.7 * share <= admitted_per_s(held, "burst", 100.0, 150.0) <= 1.15 * share


# -- the autoscaler reads the same risk --------------------------------------------------------------


def test_backlog_carries_the_predicted_risk_and_the_refused_demand() -> None:
    run = warm()
    sched, clock = run.sched, run.clock
    clock.now = 100.0
    for i in range(30):
        sched.admit(ticket(1000 + i, "burst", 0, 500.0, clock.now))
    clock.advance(0.5)
    meter = BacklogMeter({})
    summary = meter.backlog(clock.now, sched.queued_tickets(), 0, 1, window_s=10.0, risk=sched.risk)
    (tier0,) = summary.tiers
    assert tier0.ttft_slo_s == TTFT and tier0.at_risk
    assert tier0.predicted_wait_s == pytest.approx(tier0.ahead_tokens / MU, rel=0.1)
    refused = sum(sched.snapshot().counters["burst"].rejected.values())
    assert refused > 0 and summary.shed_tokens_per_s == pytest.approx(refused * 500.0 / 10.0)
    assert sched.snapshot().tiers[0].tier == 0 and sched.snapshot().service_tokens_per_s is not None
    # the scaler reads the very rate admission divides by, as its sums
    assert summary.served_tokens / summary.saturated_replica_s == pytest.approx(sched.risk.rate.per_replica())


def scaler_backlog(tiers: tuple[TierBacklog, ...] = (), shed: float = 0.0) -> Backlog:
    return Backlog(time=0.0, queued=sum(t.queued for t in tiers),
                   queued_tokens=sum(t.queued_tokens for t in tiers), in_flight=0, replicas=2,
                   arrival_tokens_per_s=1600.0, served_tokens=MU * 1e9, saturated_replica_s=1e9,
                   tiers=tiers, shed_tokens_per_s=shed)


def test_a_tier_at_risk_raises_the_replicas_wanted_within_the_growth_bound() -> None:
    scaler = QueueAwareScaler(AutoscaleConfig(enabled=True, max_replicas=16, prior_tokens_per_s=MU))
    calm = TierBacklog(0, 4, 1500.0, 0.3, None, TTFT, 1500.0, 1.5, False)
    base, reason = scaler.demand(scaler_backlog((calm,)))
    assert reason == "backlog"
    risky = TierBacklog(0, 4, 1500.0, 0.3, None, TTFT, 1500.0, 1.5, True)
    raised, reason = scaler.demand(scaler_backlog((risky,)))
    # 1500 tokens ahead within half of 1.5 s at 1000 tokens/s per replica: 2 more replicas
    assert reason == "risk:0" and raised == pytest.approx(base - 1500.0 / (MU * 30.0) + 2.0)
    huge = TierBacklog(0, 40, 60_000.0, 0.3, None, TTFT, 60_000.0, 60.0, True)
    bounded, _ = scaler.demand(scaler_backlog((huge,)))
    assert bounded == pytest.approx(1600.0 / (MU * 0.8) + 2.0)  # at most (2 - 1) x 2 replicas more


def test_refused_demand_counts_as_arrivals_for_the_steady_term() -> None:
    scaler = QueueAwareScaler(AutoscaleConfig(enabled=True, max_replicas=16, prior_tokens_per_s=MU))
    admitted_only, _ = scaler.demand(scaler_backlog())
    with_refused, _ = scaler.demand(scaler_backlog(shed=800.0))
    assert with_refused - admitted_only == pytest.approx(800.0 / (MU * 0.8))


# -- the ingress and the scheduler actor -------------------------------------------------------------


@pytest.mark.parametrize(("reason", "status"), [(RejectReason.SLO_UNREACHABLE, 429),
                                                (RejectReason.SYSTEM_SLO_UNREACHABLE, 503),
                                                (RejectReason.TIER_HOLDBACK, 429)])
def test_refusals_map_to_their_status_with_retry_after(reason: RejectReason, status: int) -> None:
    err = reject_error(reason, "detail", 7.5)
    assert (err.status, err.code, err.retry_after_s) == (status, ErrorCode(reason.value), 7.5)
    assert ERRORS[err.code].type == ("rate_limit_error" if status == 429 else "overloaded_error")


def test_the_scheduler_actor_measures_on_releases_and_answers_refusals_with_retry_after() -> None:
    config = {"tenants": [{"name": "batch", "tier": 3}, {"name": "burst"}], "scheduler": {"policy": "fifo"}}
    clock = ManualClock()

    async def scenario() -> tuple[Any, ...]:
        actor = SchedulerActor(config, replica_timeout_s=1e9, clock=clock)
        await actor.report("r0", Capacity(1, 1, 100_000, (), 100_000))
        for i in range(40):  # one slot, a request queued behind it: saturated; 1000 tokens/s
            t = make_ticket(i, tenant="batch", tier=3, estimate=1000.0)
            await actor.submit("c", [Submission(t, 1e6)])
            if i:
                clock.advance(1.0)
                await actor.release_many([Release(f"r{i - 1}", "r0", 1000)])
        burst = []
        for i in range(20):  # 10 s of tier-1 work at once, objective 5 s
            t = make_ticket(100 + i, tenant="burst", tier=1, estimate=500.0)
            t.ttft_slo_s = 5.0
            burst.append(Submission(t, 1e6))
        answers = await actor.submit("c", burst)
        return answers.results, await actor.backlog(10.0), await actor.view()

    results, backlog, view = asyncio.run(scenario())
    refused = [r for r in results.values() if r.status is AcquireStatus.REJECTED]
    assert len(refused) >= 3  # 10 s of work for an objective of 5 s: the last of it is hopeless
    for r in refused:  # burst's recent demand is within its share: the pool is short (503)
        assert r.reason is RejectReason.SYSTEM_SLO_UNREACHABLE
        assert r.retry_after_s is not None and r.retry_after_s >= 1.0
        err = acquire_error(r, 60.0)
        assert err.status == 503 and err.retry_after_s == r.retry_after_s
    assert view.stats.service_tokens_per_s == pytest.approx(MU, rel=0.1)
    assert backlog.shed_tokens_per_s > 0 and any(t.ttft_slo_s == 5.0 for t in backlog.tiers)
