"""Preempt-and-resume in the core: a requeued request goes to the front, and the dispatcher's guards."""

from __future__ import annotations

import pytest
from factories import make_scheduler, make_ticket

from driftsched.core.config import PreemptionConfig
from driftsched.core.dispatch import Dispatcher
from driftsched.core.errors import UnknownRequestError
from driftsched.core.placement import Capacity, Placement


def test_requeue_appends_generated_tokens_and_puts_the_request_first():
    scheduler, clock = make_scheduler("fifo")
    for i in (1, 2, 3):
        t = make_ticket(i, prompt_tokens=100)
        t.deadline = 50.0
        scheduler.admit(t)
    first = scheduler.dispatch()
    assert first is not None and first.request_id == "r1"
    clock.now = 5.0
    again = scheduler.requeue("r1", generated=40)
    assert (again.prompt_tokens, again.max_tokens, again.generated, again.preemptions) == (140, 4056, 40, 1)
    assert again.deadline is None and again.queued_at == 5.0  # no deadline unless one is given
    assert [scheduler.dispatch().request_id for _ in range(3)] == ["r1", "r2", "r3"]
    assert scheduler.snapshot().counters["a"].preempted == 1
    with pytest.raises(UnknownRequestError):
        scheduler.requeue("r9", 1)


def test_a_resumed_request_completes_with_its_total_output_observed():
    scheduler, _ = make_scheduler("sjf")
    scheduler.admit(make_ticket(1, estimate=100.0, prompt_tokens=10))
    scheduler.dispatch()
    scheduler.requeue("r1", generated=30)
    ticket = scheduler.dispatch()
    assert ticket is not None and ticket.remaining_estimate == 70.0
    scheduler.complete("r1", 120)
    assert scheduler.estimator.tracker.totals().count == 1


def _setup(preemption: PreemptionConfig, running_estimate: float = 1000.0):
    scheduler, clock = make_scheduler("sjf")
    placement = Placement(kv_watermark=0.0)
    placement.report("a", Capacity(1, 1, 10_000, None, 10_000), 0.0)
    progress = {"r1": 200}
    dispatcher = Dispatcher(scheduler, placement, preemption, progress=lambda rid: progress.get(rid, 0))
    scheduler.admit(make_ticket(1, estimate=running_estimate, prompt_tokens=10))
    assert [t.request_id for t, _ in dispatcher.step().grants] == ["r1"]
    return scheduler, clock, dispatcher, progress


def test_a_long_runner_gives_way_to_a_better_ranked_head_once_nothing_frees():
    cfg = PreemptionConfig(enabled=True, wait_s=2.0, min_run_s=1.0, max_per_request=1, near_end_tokens=32)
    scheduler, clock, dispatcher, _ = _setup(cfg)
    clock.now = 1.0
    scheduler.admit(make_ticket(2, estimate=10.0, prompt_tokens=10, arrival=1.0))
    assert dispatcher.step().preempted == []  # the head has not waited wait_s yet
    clock.now = 3.5
    step = dispatcher.step()
    assert [(t.request_id, r) for t, r in step.preempted] == [("r1", "a")]
    assert [(t.request_id, r) for t, r in step.grants] == [("r2", "a")]
    scheduler.requeue("r1", 200)  # what the shell does with the victim
    scheduler.complete("r2", 10)
    dispatcher.placement.release("a", "r2", now=4.0)
    assert [t.request_id for t, _ in dispatcher.step().grants] == ["r1"]
    # Preempted once already (max_per_request=1): never again, however long the wait.
    clock.now = 10.0
    scheduler.admit(make_ticket(3, estimate=5.0, prompt_tokens=10, arrival=10.0))
    clock.now = 30.0
    assert dispatcher.step().preempted == []


@pytest.mark.parametrize(
    ("cfg", "estimate"),
    [
        (PreemptionConfig(enabled=False), 1000.0),  # off
        (PreemptionConfig(enabled=True, near_end_tokens=900), 1000.0),  # 800 left: close to its end
        (PreemptionConfig(enabled=True, min_run_s=100.0), 1000.0),  # has not run long enough
        (PreemptionConfig(enabled=True), 5.0),  # ranks above the head: never preempted for it
    ],
)
def test_guards_keep_a_runner_running(cfg, estimate):
    scheduler, clock, dispatcher, _ = _setup(cfg, running_estimate=estimate)
    scheduler.admit(make_ticket(2, estimate=10.0, prompt_tokens=10, arrival=0.5))
    clock.now = 20.0
    step = dispatcher.step()
    assert step.preempted == [] and step.grants == []


def test_no_preemption_while_the_replica_keeps_freeing_capacity():
    scheduler, clock, dispatcher, _ = _setup(PreemptionConfig(enabled=True, wait_s=2.0))
    scheduler.admit(make_ticket(2, estimate=10.0, prompt_tokens=10, arrival=0.0))
    clock.now = 5.0
    dispatcher.placement.report("a", Capacity(1, 1, 10_000, None, 10_000), 4.0)
    state = next(iter(dispatcher.placement.replicas()))
    state.last_freed = 4.0  # a request left a second ago: capacity is turning over
    assert dispatcher.step().preempted == []


def test_a_resumed_request_goes_to_the_front_and_never_preempts():
    """Preempted work takes the next free slot before better-ranked requests that have not started."""
    cfg = PreemptionConfig(enabled=True, wait_s=2.0, min_run_s=1.0, max_per_request=1, near_end_tokens=32)
    scheduler, clock, dispatcher, _ = _setup(cfg)
    scheduler.admit(make_ticket(2, estimate=10.0, prompt_tokens=10, arrival=0.0))
    clock.now = 3.5
    assert [t.request_id for t, _ in dispatcher.step().grants] == ["r2"]  # r1 preempted for it
    scheduler.requeue("r1", 200)
    scheduler.admit(make_ticket(3, estimate=5.0, prompt_tokens=10, arrival=3.5))  # sjf ranks it first
    assert scheduler.peek().request_id == "r1"
    clock.now = 20.0
    assert dispatcher.step().preempted == []  # the resumed head waits for r2's slot, preempting nobody
    scheduler.complete("r2", 10)
    dispatcher.placement.release("a", "r2", now=20.0)
    assert [t.request_id for t, _ in dispatcher.step().grants] == ["r1"]
    assert scheduler.peek().request_id == "r3"


def test_a_resumed_request_withdrawn_from_the_front_leaves_the_policy_order_intact():
    scheduler, clock = make_scheduler("sjf")
    for i, estimate in ((1, 500.0), (2, 50.0), (3, 5.0)):
        scheduler.admit(make_ticket(i, estimate=estimate, prompt_tokens=10))
    assert scheduler.dispatch().request_id == "r3"
    assert scheduler.dispatch().request_id == "r2"
    scheduler.requeue("r3", 2)
    scheduler.requeue("r2", 20, deadline=1.0)
    assert scheduler.cancel("r3") is not None  # withdrawn while at the front
    clock.now = 2.0
    assert [t.request_id for t in scheduler.expire_due()] == ["r2"]
    assert scheduler.peek().request_id == "r1" and scheduler.num_queued == 1
