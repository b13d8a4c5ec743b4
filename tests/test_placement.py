"""The core's dispatch model: the fit rule, placement, heartbeat accounting and the dispatcher."""

from __future__ import annotations

from factories import make_scheduler, make_ticket

from driftsched.core.dispatch import Dispatcher
from driftsched.core.placement import Capacity, Placement


def cap(free_kv: int, *, slots: int = 4, free: int | None = None, active: tuple[str, ...] | None = (),
        kv_total: int = 10_000) -> Capacity:
    n_active = len(active) if active is not None else 0
    return Capacity(slots, slots - n_active if free is None else free, free_kv, active, kv_total)


def test_fit_needs_a_slot_and_kv_for_the_prompt_only():
    p = Placement(kv_watermark=0.01)  # 100 tokens of 10,000
    p.report("a", cap(1_000, active=("x",)), 0.0)
    assert p.choose(make_ticket(1, prompt_tokens=900)) == "a"  # 900 + 100 <= 1000
    assert p.choose(make_ticket(2, prompt_tokens=901)) is None
    # The output estimate never enters the rule: a huge estimate fits as well as a tiny one.
    assert p.choose(make_ticket(3, prompt_tokens=500, estimate=1e6)) == "a"


def test_an_idle_replica_takes_any_head():
    p = Placement()
    p.report("a", cap(50), 0.0)
    assert p.choose(make_ticket(1, prompt_tokens=5_000)) == "a"


def test_most_free_kv_wins_then_slots_then_id():
    p = Placement()
    p.report("a", cap(3_000, active=("x",)), 0.0)
    p.report("b", cap(6_000, active=("y",)), 0.0)
    assert p.choose(make_ticket(1, prompt_tokens=10)) == "b"
    p.report("c", cap(6_000, active=()), 0.0)
    assert p.choose(make_ticket(2, prompt_tokens=10)) == "c"  # same KV, more free slots


def test_pending_grants_hold_their_prompt_until_a_report_shows_them():
    p = Placement(kv_watermark=0.0)
    p.report("a", cap(1_000, active=("x",)), 0.0)
    t1, t2 = make_ticket(1, prompt_tokens=600), make_ticket(2, prompt_tokens=600)
    p.grant("a", t1, 0.0)
    assert p.choose(t2) is None  # 1000 - 600 pending < 600
    # The heartbeat now lists r1 and its KV figure includes it: nothing is pending any more.
    p.report("a", cap(400, active=("x", "r1")), 1.0)
    assert p.choose(t2) is None
    p.release("a", "r1", tokens=700)  # finished: its KV is credited until the next report
    assert p.choose(t2) == "a"


def test_slots_count_grants_and_unknown_running_requests_and_withheld_ones():
    p = Placement()
    p.report("a", cap(10_000, slots=2, active=("old",)), 0.0)  # ran by an earlier scheduler
    p.grant("a", make_ticket(1), 0.0)
    assert p.choose(make_ticket(2)) is None
    p.release("a", "old")
    assert p.choose(make_ticket(2)) == "a"
    # An engine under pressure reports fewer free slots than max - active: the rest is withheld.
    p.report("a", cap(10_000, slots=4, free=0, active=("r1",)), 1.0)
    assert p.choose(make_ticket(3)) is None


def test_lost_grants_and_silent_replicas():
    p = Placement(replica_timeout_s=5.0, grant_grace_s=30.0)
    p.report("a", cap(10_000), 0.0)
    p.grant("a", make_ticket(1), 0.0)
    assert p.report("a", cap(10_000), 10.0) == []
    assert p.report("a", cap(10_000), 31.0) == ["r1"]
    p.grant("a", make_ticket(2), 31.0)
    assert p.expire(35.0) == []
    assert p.expire(36.5) == [("a", ["r2"])]
    assert p.choose(make_ticket(3)) is None


def test_exact_reports_count_grants_directly():
    p = Placement()
    p.report("a", cap(10_000, slots=2, active=None), 0.0)
    p.grant("a", make_ticket(1), 0.0)
    p.report("a", cap(9_000, slots=2, free=1, active=None), 0.5)
    p.grant("a", make_ticket(2), 0.5)
    assert p.choose(make_ticket(3)) is None
    p.release("a", "r1")
    assert p.choose(make_ticket(3)) == "a"


def test_dispatcher_stops_at_the_first_head_that_fits_nowhere():
    scheduler, _ = make_scheduler("fifo")
    placement = Placement(kv_watermark=0.0)
    placement.report("a", cap(1_000, active=("x",)), 0.0)
    for i, prompt in enumerate((400, 800, 10), start=1):
        assert scheduler.admit(make_ticket(i, prompt_tokens=prompt)).admitted
    step = Dispatcher(scheduler, placement).step()
    # r2 does not fit after r1; r3 would, but it must not overtake the policy's head.
    assert [(t.request_id, r) for t, r in step.grants] == [("r1", "a")]
    assert scheduler.num_queued == 2


def test_dispatcher_expires_overdue_tickets_first():
    scheduler, clock = make_scheduler("fifo")
    placement = Placement()
    ticket = make_ticket(1)
    ticket.deadline = 5.0
    scheduler.admit(ticket)
    clock.now = 6.0
    placement.report("a", cap(10_000), 6.0)
    step = Dispatcher(scheduler, placement).step()
    assert [t.request_id for t in step.expired] == ["r1"] and step.grants == []
