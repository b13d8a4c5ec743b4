"""The core's dispatch model: the fit rule, placement, heartbeat accounting and the dispatcher."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from factories import make_config, make_scheduler, make_ticket
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from driftsched.core.config import SchedulerConfig
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
    # With no growth horizon (H = 0, Placement's default) the estimate never enters the rule.
    assert p.choose(make_ticket(3, prompt_tokens=500, estimate=1e6)) == "a"


def test_growth_reservation_counts_each_grants_next_h_tokens_and_the_newcomers_first():
    p = Placement(kv_watermark=0.0, kv_growth_tokens=64)
    p.report("a", cap(1_000, active=("x",)), 0.0)  # x was granted by no one here: nothing to reserve
    p.grant("a", make_ticket(1, prompt_tokens=100, estimate=500.0), 0.0)  # holds 100 + 64 of 1000
    assert p.choose(make_ticket(2, prompt_tokens=772, estimate=300.0)) == "a"  # 772 + 64 + 64 = 900
    assert p.choose(make_ticket(3, prompt_tokens=773, estimate=300.0)) is None
    assert p.choose(make_ticket(4, prompt_tokens=800, estimate=20.0)) == "a"  # its own: min(64, 20)
    # The same figures under H = 0 are the prompt-only rule: anything up to the free 900 fits.
    old = Placement(kv_watermark=0.0, kv_growth_tokens=0)
    old.report("a", cap(1_000, active=("x",)), 0.0)
    old.grant("a", make_ticket(1, prompt_tokens=100, estimate=500.0), 0.0)
    assert old.choose(make_ticket(5, prompt_tokens=900, estimate=1e6)) == "a"
    assert old.choose(make_ticket(6, prompt_tokens=901, estimate=1.0)) is None


def test_reported_progress_shrinks_a_reservation_near_the_estimated_end():
    p = Placement(kv_watermark=0.0, kv_growth_tokens=64)
    p.report("a", cap(1_000), 0.0)
    p.grant("a", make_ticket(1, prompt_tokens=100, estimate=500.0), 0.0)
    ticket = make_ticket(2, prompt_tokens=350, estimate=10.0)
    # Same free KV in both reports, so only progress differs: 350 + 10 + 64 > 400, then 350 + 10 + 30.
    p.report("a", Capacity(4, 3, 400, ("r1",), 10_000, progress=(100,)), 1.0)
    assert p.choose(ticket) is None
    p.report("a", Capacity(4, 3, 400, ("r1",), 10_000, progress=(470,)), 2.0)
    assert p.choose(ticket) == "a"
    # Past its estimate a request reserves nothing; an exact report gives progress by `progress_ids`.
    p.report("a", Capacity(4, 3, 360, None, 10_000, progress=(600,), progress_ids=("r1",)), 3.0)
    assert p.choose(ticket) == "a"  # 350 + 10 + 0 <= 360
    assert p.choose(make_ticket(3, prompt_tokens=351, estimate=10.0)) is None


def test_a_release_returns_the_reservation_and_a_preemption_check_counts_it():
    p = Placement(kv_watermark=0.0, kv_growth_tokens=64)
    p.report("a", cap(1_000, active=None), 0.0)
    p.grant("a", make_ticket(1, prompt_tokens=100, estimate=500.0), 0.0)
    p.grant("a", make_ticket(2, prompt_tokens=50, estimate=10.0), 0.0)
    p.report("a", cap(850, free=2, active=None), 0.5)  # exact: both prompts are in the figure now
    head = make_ticket(3, prompt_tokens=860, estimate=64.0)
    assert p.choose(head) is None  # 860 + 64 + (64 + 10) > 850
    # Preempting r1 frees its 100 tokens and its 64 reserved: 998 <= 850 + 164 (not 850 + 100).
    assert p.fits_after_release("a", head, "r1", 100)
    p.release("a", "r1", tokens=100)
    assert p.choose(head) == "a"  # 860 + 64 + 10 <= 950


def test_an_idle_replica_takes_any_head_whatever_its_growth():
    p = Placement(kv_growth_tokens=128)
    p.report("a", cap(50), 0.0)
    assert p.choose(make_ticket(1, prompt_tokens=5_000, estimate=1e6)) == "a"


def test_growth_horizon_is_validated():
    with pytest.raises(ValueError, match="kv_growth_tokens"):
        Placement(kv_growth_tokens=-1)
    with pytest.raises(ValidationError, match="reserve no growth"):
        make_config(scheduler={"kv_growth_tokens": -8})


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


def _oracle(p: Placement, ticket: Any) -> str | None:
    """`choose` without its memory: every replica checked by the fit rule, best key first."""
    fitting = [(r.free_kv(), r.free_slots(), r.replica_id) for r in p.replicas() if p.fits(r, ticket)]
    return max(fitting)[2] if fitting else None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("report", "grant", "release", "ask", "new", "drop")),
                          st.integers(0, 2), st.integers(0, 3_000)), max_size=60))
def test_choose_remembering_a_head_that_fit_nowhere_agrees_with_a_full_scan(ops: list[Any]) -> None:
    # A big head asked again and again while grants, releases and reports change the replicas: the
    # remembered "fits nowhere" must never hide a replica that changed since.
    p = Placement(kv_watermark=0.01)
    head, n, granted = make_ticket(0, prompt_tokens=2_000), 0, []
    for op, r, x in ops:
        replica = "abc"[r]
        if op == "report":
            p.report(replica, cap(x, slots=1 + x % 3, active=("resident",) if x % 2 else ()), 0.0)
        elif op == "grant" and (choice := p.choose(small := make_ticket(n := n + 1, prompt_tokens=x % 500))):
            p.grant(choice, small, 0.0)
            granted.append((choice, small.request_id))
        elif op == "release" and granted:
            where, rid = granted.pop(x % len(granted))
            p.release(where, rid, tokens=x)
        elif op == "new":
            head = make_ticket(n := n + 1, prompt_tokens=x)
        elif op == "drop":
            p.drop(replica)
        expected = _oracle(p, head)
        assert p.choose(head) == expected


def _tight(seq: int, prompt_tokens: int, tpot_s: float = 0.1) -> Any:
    return replace(make_ticket(seq, prompt_tokens=prompt_tokens), tpot_slo_s=tpot_s)


def _paced(p: Placement, t0: float, step_s: float, seconds: float, free_kv: int = 5_000) -> float:
    """Reports from replica "a" running "r1" at `step_s` seconds per token for `seconds`; the end time."""
    t, done = t0, 0
    while t < t0 + seconds:
        t += 0.25
        done += round(0.25 / step_s)
        p.report("a", Capacity(4, 3, free_kv, ("r1",), 10_000, progress=(done,)), t)
    return t


def test_tpot_guard_shrinks_the_kv_new_grants_may_fill_while_the_pace_misses_the_tightest_objective():
    p = Placement(kv_watermark=0.0, tpot_guard=True)
    p.report("a", Capacity(4, 3, 5_000, ("r1",), 10_000), 0.0)
    p.grant("a", _tight(1, prompt_tokens=100), 0.0)  # r1: 100 ms per token promised
    big = make_ticket(2, prompt_tokens=4_500)  # fits the 5,000 free tokens of 10,000
    t = _paced(p, 0.0, 0.05, 2.0)  # 50 ms a step: within the objective, the whole KV is open
    assert p.choose(big) == "a"
    t = _paced(p, t, 0.125, 4.0)  # 125 ms a step: every second of it cuts the share
    assert p.choose(big) is None
    assert p.choose(make_ticket(3, prompt_tokens=100)) == "a"  # small work still fits the lower share
    _paced(p, t, 0.05, 30.0)  # fast again: the share comes back
    assert p.choose(big) == "a"


def test_tpot_guard_reads_only_the_objectives_of_the_grants_there_and_never_blocks_an_idle_replica():
    loose = Placement(kv_watermark=0.0, tpot_guard=True)
    loose.report("a", Capacity(4, 3, 5_000, ("r1",), 10_000), 0.0)
    loose.grant("a", _tight(1, prompt_tokens=100, tpot_s=0.5), 0.0)
    _paced(loose, 0.0, 0.125, 6.0)  # slow for a 100 ms stream, fine for this 500 ms one
    assert loose.choose(make_ticket(2, prompt_tokens=4_500)) == "a"
    off = Placement(kv_watermark=0.0)  # a bare Placement has no guard
    off.report("a", Capacity(4, 3, 5_000, ("r1",), 10_000), 0.0)
    off.grant("a", _tight(1, prompt_tokens=100), 0.0)
    _paced(off, 0.0, 0.125, 6.0)
    assert off.choose(make_ticket(2, prompt_tokens=4_500)) == "a"
    guarded = Placement(kv_watermark=0.0, tpot_guard=True)
    guarded.report("a", Capacity(4, 3, 5_000, ("r1",), 10_000), 0.0)
    guarded.grant("a", _tight(1, prompt_tokens=100), 0.0)
    t = _paced(guarded, 0.0, 0.125, 6.0)
    assert guarded.choose(make_ticket(2, prompt_tokens=4_500)) is None
    guarded.release("a", "r1", 100, t)
    guarded.report("a", Capacity(4, 4, 10_000, (), 10_000), t + 0.1)  # nothing runs: any ticket
    assert guarded.choose(make_ticket(3, prompt_tokens=9_000)) == "a"


def test_the_configured_placement_guards_tpot_by_default():
    assert Placement.from_config(SchedulerConfig()).tpot_guard
    off = SchedulerConfig.model_validate({"placement": {"tpot_guard": False}})
    assert Placement.from_config(off).tpot_guard is False
