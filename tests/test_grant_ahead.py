"""Grant-ahead and revocation, at-risk preemption and orders pushed to replicas.

A replica with one running slot and one slot ahead (`Capacity.running_slots`): a grant ahead that has
not started is revoked for a better-ranked head that fits nowhere, goes back to its place in the
queue, is granted once more later and never runs twice; a started one is not revoked. An at-risk head
preempts without waiting `wait_s`. The scheduler actor posts each stop order to the replica's
``orders`` poll at once, and the resumption of a revoked request gets its next grant.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from factories import make_scheduler, make_ticket

from deployments.replica import RunStops
from deployments.scheduler_actor import AcquireStatus, Release, Resumption, SchedulerActor, Submission
from driftsched.core.config import PreemptionConfig
from driftsched.core.dispatch import Dispatcher, DispatchStep
from driftsched.core.placement import Capacity, Placement
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.simulator import Simulation, core_config_for
from driftsched.sim.workload import TenantSpec, Workload, WorkloadItem

KV = 100_000


def _ahead(active: tuple[str, ...], waiting: tuple[str, ...]) -> Capacity:
    """A heartbeat of a replica running one request with one slot ahead (2 slots, 1 running)."""
    return Capacity(2, 2 - len(active), KV, active, KV, progress=tuple(0 for _ in active), running_slots=1,
                    waiting_ids=waiting)


def _pool(policy: str = "sjf", preemption: PreemptionConfig | None = None) -> tuple[Any, Any, Dispatcher]:
    scheduler, clock = make_scheduler(policy)
    placement = Placement(kv_watermark=0.0)
    placement.report("a", _ahead((), ()), 0.0)
    return scheduler, clock, Dispatcher(scheduler, placement, preemption)


def _granted(dispatcher: Dispatcher) -> list[str]:
    return [t.request_id for t, _ in dispatcher.step().grants]


def test_a_grant_ahead_gives_way_to_a_better_ranked_head_and_returns_to_its_place():
    scheduler, clock, dispatcher = _pool()
    scheduler.admit(make_ticket(1, estimate=1000.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r1"]
    scheduler.admit(make_ticket(2, estimate=500.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r2"]  # r2 waits inside the engine, ahead
    dispatcher.placement.report("a", _ahead(("r1", "r2"), ("r2",)), 0.5)
    clock.now = 1.0
    scheduler.admit(make_ticket(3, estimate=10.0, prompt_tokens=10, arrival=1.0))
    scheduler.admit(make_ticket(4, estimate=600.0, prompt_tokens=10, arrival=1.0))
    step = dispatcher.step()
    assert [(t.request_id, r) for t, r in step.revoked] == [("r2", "a")]
    assert [t.request_id for t, _ in step.grants] == ["r3"] and step.preempted == []
    r2 = scheduler.peek()
    assert r2 is not None and r2.request_id == "r2"  # back before r4, where SJF puts it
    assert (r2.preemptions, r2.generated, r2.prompt_tokens) == (0, 0, 10)  # revoked at no cost
    assert scheduler.snapshot().counters["a"].preempted == 0
    # r1 finishes: r2 is granted again, once, and r4 after it.
    dispatcher.placement.release("a", "r1", 1010, 2.0)
    dispatcher.placement.report("a", _ahead(("r3",), ()), 2.0)
    assert _granted(dispatcher) == ["r2"]  # one slot free: r2 before r4, granted once more
    counters = scheduler.snapshot().counters["a"]
    assert (counters.dispatched, counters.revoked) == (4, 1)  # r1, r2, r3, r2 again; r2's first undone


def test_a_started_grant_and_a_better_ranked_one_are_never_revoked():
    scheduler, clock, dispatcher = _pool()
    scheduler.admit(make_ticket(1, estimate=1000.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r1"]
    scheduler.admit(make_ticket(2, estimate=500.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r2"]
    dispatcher.placement.report("a", _ahead(("r1", "r2"), ()), 0.5)  # both started (none waiting)
    clock.now = 1.0
    scheduler.admit(make_ticket(3, estimate=10.0, prompt_tokens=10, arrival=1.0))
    step = dispatcher.step()
    assert step.revoked == [] and step.grants == []
    dispatcher.placement.report("a", _ahead(("r1", "r2"), ("r2",)), 1.5)  # r2 waiting, but r9 ranks below it
    scheduler.cancel("r3")
    scheduler.admit(make_ticket(9, estimate=900.0, prompt_tokens=10, arrival=1.5))
    step = dispatcher.step()
    assert step.revoked == [] and step.grants == []


def test_fifo_never_revokes_an_earlier_arrival():
    scheduler, clock, dispatcher = _pool("fifo")
    scheduler.admit(make_ticket(1, prompt_tokens=10))
    scheduler.admit(make_ticket(2, prompt_tokens=10))
    assert _granted(dispatcher) == ["r1", "r2"]
    dispatcher.placement.report("a", _ahead(("r1", "r2"), ("r2",)), 0.5)
    clock.now = 1.0
    scheduler.admit(make_ticket(3, estimate=1.0, prompt_tokens=10, arrival=1.0))
    step = dispatcher.step()
    assert step.revoked == [] and step.grants == []


def test_a_grant_beyond_the_running_slots_is_revocable_before_any_report():
    scheduler, _, dispatcher = _pool()
    scheduler.admit(make_ticket(1, estimate=1000.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r1"]
    scheduler.admit(make_ticket(2, estimate=500.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r2"]
    placement = dispatcher.placement
    assert not placement.revocable("a", "r1") and placement.revocable("a", "r2")  # r1 took the running slot
    placement.report("a", _ahead(("r1", "r2"), ()), 0.5)  # reported: r2 started after all
    assert not placement.revocable("a", "r2")


def _one_slot(preemption: PreemptionConfig) -> tuple[Any, Any, Dispatcher]:
    scheduler, clock = make_scheduler("sjf")
    placement = Placement(kv_watermark=0.0)
    placement.report("a", Capacity(1, 1, KV, None, KV), 0.0)
    dispatcher = Dispatcher(scheduler, placement, preemption, progress=lambda rid: 200)
    scheduler.admit(make_ticket(1, estimate=1000.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r1"]
    return scheduler, clock, dispatcher


def test_a_head_whose_objective_is_at_risk_preempts_without_waiting():
    cfg = PreemptionConfig(enabled=True, wait_s=30.0, min_run_s=0.0)
    scheduler, clock, dispatcher = _one_slot(cfg)
    clock.now = 1.0
    head = make_ticket(2, estimate=10.0, prompt_tokens=10, arrival=1.0)
    head.ttft_slo_s = 1.0
    scheduler.admit(head)
    clock.now = 1.3  # waited 0.3 of its 1 s objective: not at risk, and far from wait_s
    assert dispatcher.step().preempted == []
    clock.now = 1.6  # past risk_share (0.5) of it: preempted at once, no wait_s, no stuck replica
    step = dispatcher.step()
    assert [t.request_id for t, _ in step.preempted] == ["r1"]
    assert [t.request_id for t, _ in step.grants] == ["r2"]


def test_a_head_with_slack_still_waits_wait_s():
    cfg = PreemptionConfig(enabled=True, wait_s=30.0, min_run_s=0.0)
    scheduler, clock, dispatcher = _one_slot(cfg)
    clock.now = 1.0
    scheduler.admit(make_ticket(2, estimate=10.0, prompt_tokens=10, arrival=1.0))  # no TTFT objective
    clock.now = 20.0
    assert dispatcher.step().preempted == []


# ---------------------------------------------------------------- the replica's side


def test_an_order_for_a_run_not_here_yet_stops_it_as_it_arrives_and_only_that_run():
    stops = RunStops(keep_s=10.0)
    assert stops.order("q", 7, now=0.0) is False  # not here: kept
    assert stops.start("q", 8, now=1.0) is True  # another grant's run of the same request runs
    stops.end("q", 8)
    assert stops.start("q", 7, now=2.0) is False  # the revoked run ends as it comes
    assert stops.start("q", 7, now=3.0) is True  # the order is used up
    assert stops.order("q", 7, now=3.0) is True  # here: stop it in the engine now
    assert stops.order("q", 0, now=3.0) is True  # 0: whichever run is here
    stops.end("q", 7)
    stops.order("z", 1, now=0.0)
    assert stops.start("z", 1, now=11.0) is True and len(stops) == 1  # kept keep_s only


# ---------------------------------------------------------------- the actor


def test_the_actor_pushes_a_revocation_at_once_and_regrants_through_the_resumption():
    config = {"tenants": [{"name": "a"}], "scheduler": {"policy": "sjf"}}

    async def scenario() -> tuple[Any, ...]:
        actor = SchedulerActor(config)
        await actor.report("r0", _ahead((), ()))
        first = await actor.submit("c", [Submission(make_ticket(1, estimate=1000.0, prompt_tokens=10), 30.0),
                                         Submission(make_ticket(2, estimate=500.0, prompt_tokens=10), 30.0)])
        poll = asyncio.ensure_future(actor.orders("r0", 10.0))
        await asyncio.sleep(0.05)
        assert not poll.done()
        await actor.report("r0", _ahead(("r1", "r2"), ("r2",)))
        better = await actor.submit("c", [Submission(make_ticket(3, estimate=10.0, prompt_tokens=10), 30.0)])
        orders = await asyncio.wait_for(poll, 1.0)  # answered by the submit, not a heartbeat
        grant = first.results["r2"].grant
        resumed = await actor.submit("c", [Submission(make_ticket(2, estimate=500.0, prompt_tokens=10), 30.0,
                                                      Resumption("r0", grant, 0))])
        await actor.release_many([Release("r1", "r0", 1000)])
        regrant = (await actor.poll("c", 1.0)).results
        sizes = await actor.table_sizes()
        return first, better, orders, resumed, regrant, (await actor.view()).stats, sizes

    first, better, orders, resumed, regrant, stats, sizes = asyncio.run(scenario())
    assert [first.results[r].status for r in ("r1", "r2")] == [AcquireStatus.GRANTED] * 2
    assert better.results["r3"].status is AcquireStatus.GRANTED
    assert orders == {"r2": first.results["r2"].grant}
    assert resumed.results == {}  # back in the queue: its answer comes with a poll
    assert regrant["r2"].status is AcquireStatus.GRANTED and regrant["r2"].grant > better.results["r3"].grant
    assert stats.counters["a"].preempted == 0 and stats.counters["a"].admitted == 3
    assert sizes["revoked"] == 0 and sizes["orders"] == 0


def test_an_at_risk_head_preempts_and_the_replica_hears_it_before_any_heartbeat():
    from driftsched.core.clock import ManualClock

    config = {"tenants": [{"name": "gold", "tier": 0, "ttft_slo_s": 1.0}, {"name": "bronze", "tier": 2}],
              "scheduler": {"policy": "priority", "preemption": {"enabled": True, "wait_s": 60.0,
                                                                 "min_run_s": 0.0}}}
    clock = ManualClock()

    async def scenario() -> tuple[Any, ...]:
        actor = SchedulerActor(config, clock=clock)
        await actor.report("r0", Capacity(1, 1, KV, (), KV))
        long = make_ticket(1, tenant="bronze", tier=2, estimate=1000.0, prompt_tokens=10, arrival=0.0)
        await actor.submit("c", [Submission(long, 60.0)])
        await actor.report("r0", Capacity(1, 0, KV, ("r1",), KV, progress=(5,)))
        poll = asyncio.ensure_future(actor.orders("r0", 30.0))
        gold = make_ticket(2, tenant="gold", tier=0, estimate=10.0, prompt_tokens=10, arrival=0.0)
        gold.ttft_slo_s = 1.0
        clock.now = 0.2
        await actor.submit("c", [Submission(gold, 60.0)])
        await asyncio.sleep(0.05)
        early = poll.done()
        clock.now = 0.9  # waited 0.7 s of its 1 s objective: at risk, though wait_s (60 s) is far off
        await actor.release_many([])  # any call that dispatches; no report comes in between
        return early, await asyncio.wait_for(poll, 1.0)

    early, orders = asyncio.run(scenario())
    assert not early  # with slack, it waits
    assert orders == {"r1": 1}  # the running bronze request's grant, ordered stopped at once


def test_a_resumed_grant_ahead_is_never_revoked_and_a_step_stays_finite():
    # A resumed request goes before every request that has not started: revoking it would hand its
    # place straight back to it, round after round within one step.
    scheduler, clock, dispatcher = _pool()
    scheduler.admit(make_ticket(1, estimate=1000.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r1"]
    scheduler.admit(make_ticket(2, estimate=500.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r2"]
    resumed = scheduler.in_flight_ticket("r2")
    assert resumed is not None
    resumed.preemptions = 1
    dispatcher.placement.report("a", _ahead(("r1", "r2"), ("r2",)), 0.5)
    clock.now = 1.0
    scheduler.admit(make_ticket(3, estimate=10.0, prompt_tokens=10, arrival=1.0))
    step = dispatcher.step()
    assert step.revoked == [] and step.grants == []


def test_a_grant_ahead_moves_to_a_replica_that_would_start_it_at_once():
    scheduler, clock, dispatcher = _pool("fifo")
    scheduler.admit(make_ticket(1, estimate=1000.0, prompt_tokens=10))
    scheduler.admit(make_ticket(2, estimate=500.0, prompt_tokens=10))
    assert _granted(dispatcher) == ["r1", "r2"]  # r2 waits ahead, behind r1
    dispatcher.placement.report("a", _ahead(("r1", "r2"), ("r2",)), 0.5)
    dispatcher.placement.report("b", _ahead((), ()), 0.6)  # a new replica, idle
    clock.now = 0.6
    step = dispatcher.step()
    assert [(t.request_id, r) for t, r in step.revoked] == [("r2", "a")]
    assert [(t.request_id, r) for t, r in step.grants] == [("r2", "b")]
    assert dispatcher.placement.holds("b", "r2") and not dispatcher.placement.holds("a", "r2")
    assert scheduler.snapshot().counters["a"].dispatched == 2  # moved, not dispatched again


def test_a_revoked_request_that_finished_where_it_was_leaves_no_copy_behind():
    config = {"tenants": [{"name": "a"}], "scheduler": {"policy": "sjf"}}

    async def scenario() -> dict[str, int]:
        actor = SchedulerActor(config)
        await actor.report("r0", _ahead((), ()))
        await actor.submit("c", [Submission(make_ticket(1, estimate=1000.0, prompt_tokens=10), 30.0),
                                 Submission(make_ticket(2, estimate=500.0, prompt_tokens=10), 30.0)])
        await actor.report("r0", _ahead(("r1", "r2"), ("r2",)))
        await actor.submit("c", [Submission(make_ticket(3, estimate=10.0, prompt_tokens=10), 30.0)])
        # The stop order lost the race: r2 had started and finished on r0 before it arrived.
        await actor.release_many([Release("r2", "r0", 480)])
        return await actor.table_sizes()

    sizes = asyncio.run(scenario())
    assert sizes["core_queued"] == 0 and sizes["revoked"] == 0 and sizes["granted"] == 2  # r1 and r3 only


def _race(moved: bool) -> tuple[Simulation, Any]:
    """A simulated run where the dispatcher revokes request 0 after its engine already ran it to the
    end in the step under way (one output token), as a stop order can lose the race live; `moved`:
    it is granted on the other replica in the same step, as `_move_ahead` does."""
    items = [WorkloadItem(0.0, "a", "qa", 200, 8, 1), WorkloadItem(0.001, "a", "qa", 200, 8, 4)]
    workload = Workload("race", items, (TenantSpec("a", 0, 1.0),))
    perf = PerfModel()
    sim = Simulation(workload, "fifo", perf, 2, core_config_for(workload, perf), queue_timeout_s=3600.0)
    real_step, calls = sim.dispatcher.step, []

    def step() -> DispatchStep:
        calls.append(sim.clock.now)
        if len(calls) != 2:  # the second dispatch, at request 1's arrival, revokes request 0
            return real_step()
        ticket = sim.scheduler.in_flight_ticket("0")
        assert ticket is not None and sim._pending[int(sim.replica[0])]  # finished in the step under way
        source = str(int(sim.replica[0]))
        sim.placement.release(source, "0")
        out = real_step()
        if moved:
            target = "1" if source == "0" else "0"
            sim.placement.grant(target, ticket, sim.clock.now)
            out.grants.append((ticket, target))
        else:
            sim.scheduler.unstart("0")
        out.revoked.append((ticket, source))
        return out

    sim.dispatcher.step = step  # type: ignore[method-assign]
    return sim, sim.run()


def test_a_simulated_revocation_that_lost_the_race_completes_the_run_once_and_leaves_no_copy():
    for moved in (False, True):
        sim, result = _race(moved)
        assert not np.isnan(result.finish).any()
        counters = result.stats.counters["a"]
        assert counters.completed == 2 and counters.revoked == 0
        assert sim.scheduler.num_queued == 0 and sim.scheduler.num_in_flight == 0
        assert all(sum(1 for _ in e.running) == 0 for e in sim.engines)
        assert all(not sim.placement.holds(r, "0") for r in ("0", "1"))
