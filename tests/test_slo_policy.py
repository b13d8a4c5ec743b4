"""The SLO-aware order: deadline first, a bounded size offset, late tickets last.

The contract tests every registered policy passes live in `test_policies.py`; these check the promise
stated in `policies/slo.py`'s docstring: its overtaking bound, and what it reads (the ticket's objectives
and the drift-corrected estimate).
"""

from __future__ import annotations

import math

import pytest
from factories import make_ticket
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsched.core.request import Ticket
from driftsched.core.slo import TIER_OBJECTIVES
from policies import SloPolicy, make_policy
from policies.base import ttft_deadline
from policies.slo import ttft_objective_s


def ticket(
    seq: int,
    arrival: float,
    tier: int = 1,
    estimate: float = 100.0,
    prompt: int = 100,
    ttft_s: float | None = None,
) -> Ticket:
    t = make_ticket(seq, tier=tier, estimate=estimate, arrival=arrival, prompt_tokens=prompt)
    t.ttft_slo_s = TIER_OBJECTIVES[tier].ttft_s if ttft_s is None else ttft_s
    return t


# One event: add a ticket (tier, estimate, prompt tokens, queue timeout, seconds since the last event),
# or advance the clock by some seconds and pop. Gaps cluster around the objectives and timeouts around
# the tiers' objectives, where the bound, lateness and the cap bite.
gap = st.one_of(st.sampled_from([0.0, 0.4, 1.5, 5.0, 30.0]), st.floats(0, 40))
add = st.tuples(
    st.just("add"),
    st.integers(0, 3),
    st.one_of(st.sampled_from([1.0, 4096.0]), st.floats(1, 4096)),
    st.one_of(st.sampled_from([0, 8000]), st.integers(0, 8000)),
    st.one_of(st.none(), st.sampled_from([2.0, 30.0, 60.0]), st.floats(0, 90)),
    gap,
)
pop = st.tuples(st.just("pop"), gap)
events = st.lists(st.one_of(add, add, pop), max_size=150)


def expires(t: Ticket) -> float:
    return t.deadline if t.deadline is not None else math.inf


@pytest.mark.parametrize("late", ["last", "expiry"])
@settings(max_examples=300, deadline=None)
@given(
    events=events,
    size_share=st.one_of(st.sampled_from([0.0, 0.25, 1.0]), st.floats(0, 1)),
    size_ref=st.one_of(st.sampled_from([1e3, 75e3]), st.floats(1.0, 1e7)),
)
def test_on_time_tickets_are_overtaken_only_within_the_bound(late, events, size_share, size_ref):
    policy = SloPolicy(size_share=size_share, size_ref=size_ref, late=late)

    def key(t: Ticket) -> float:
        return policy.key(t)[0]

    queued: dict[str, Ticket] = {}
    now, seq = 0.0, 0
    for event in events:
        now += event[-1]
        if event[0] == "add":
            seq += 1
            _, tier, estimate, prompt, timeout, _ = event
            t = ticket(seq, now, tier=tier, estimate=estimate, prompt=prompt)
            t.deadline = None if timeout is None else now + timeout
            queued[t.request_id] = t
            policy.add(t, now)
            continue
        popped = policy.pop(now)
        if popped is None:
            assert not queued
            continue
        del queued[popped.request_id]
        on_time = [w for w in queued.values() if ttft_deadline(w) >= now]
        late_ones = [w for w in queued.values() if ttft_deadline(w) < now]
        if ttft_deadline(popped) < now:  # a late ticket overtakes on-time ones only by the late rule
            lead = expires(popped) if late == "expiry" else math.inf
            assert all(lead < key(w) for w in on_time)
            assert all(expires(popped) <= expires(w) for w in late_ones) if late == "expiry" else True
            continue
        for w in on_time:  # due (or expiring) less than w's offset after w's deadline, or tied first
            bound = size_share * ttft_objective_s(w)
            assert min(ttft_deadline(popped), expires(popped)) - ttft_deadline(w) < bound or (
                key(popped) == key(w) and popped.seq < w.seq
            )
        for (
            w
        ) in late_ones:  # a late ticket waits for on-time ones (under "expiry", those due before it expires)
            assert key(popped) <= (expires(w) if late == "expiry" else math.inf)


def test_a_more_important_tier_is_due_first_even_when_it_arrives_much_later():
    policy = make_policy("slo")
    batch = ticket(1, 0.0, tier=3)  # due at 60 s
    chat = ticket(2, 50.0, tier=0)  # arrived 50 s later, due at 51.5 s
    policy.add(batch, 0.0)
    policy.add(chat, 50.0)
    assert [policy.pop(50.0), policy.pop(50.0)] == [chat, batch]


def test_smaller_first_among_requests_due_together_and_never_beyond_the_bound():
    policy = SloPolicy(size_share=0.25)
    large = ticket(1, 0.0, tier=2, estimate=3000, prompt=2000)  # offset close to 0.25 * 30 s = 7.5 s
    small = ticket(2, 5.0, tier=2, estimate=10, prompt=50)  # 5 s later: inside the bound
    tiny_late = ticket(3, 7.5, tier=2, estimate=1, prompt=1)  # 7.5 s later: at the bound
    for t in (large, small, tiny_late):
        policy.add(t, t.arrival_time)
    assert [policy.pop(8.0) for _ in range(3)] == [small, large, tiny_late]


def test_orders_by_the_corrected_estimate_not_the_raw_one():
    policy = make_policy("slo")
    a, b = ticket(1, 0.0, estimate=2000), ticket(2, 0.0, estimate=20)
    a.raw_estimate, b.raw_estimate = 20.0, 2000.0  # the raw estimates say the opposite
    policy.add(a, 0.0)
    policy.add(b, 0.0)
    assert policy.pop(0.0) is b


def test_a_stricter_objective_on_the_request_moves_it_ahead():
    policy = make_policy("slo")
    default = ticket(1, 0.0, tier=1)  # tier 1: due at 5 s
    strict = ticket(2, 1.0, tier=1, ttft_s=2.0)  # asked for 2 s: due at 3 s
    policy.add(default, 0.0)
    policy.add(strict, 1.0)
    assert policy.pop(1.0) is strict


def test_late_tickets_wait_behind_on_time_ones_instead_of_making_them_late_too():
    last, keep = SloPolicy(), SloPolicy(late="keep")
    missed = ticket(1, 0.0, tier=0)  # due at 1.5 s
    fresh = ticket(2, 2.0, tier=0)  # due at 3.5 s
    for policy in (last, keep):
        policy.add(missed, 0.0)
        policy.add(fresh, 2.0)
    # At 2.5 s the first has missed its objective: serving it first would make the second miss as well.
    assert last.peek(2.5) is fresh and last.pop(2.5) is fresh and last.pop(2.5) is missed
    assert keep.pop(2.5) is missed  # plain EDF: the domino


def test_under_expiry_a_late_ticket_goes_before_on_time_work_due_after_its_queue_deadline():
    policy = SloPolicy(size_share=0.0, late="expiry")
    missed = ticket(1, 0.0, tier=0)  # due at 1.5 s, expires at 60 s
    missed.deadline = 60.0
    batch = ticket(2, 10.0, tier=3)  # on time until 70 s: after the late one's queue deadline
    docs = ticket(3, 28.0, tier=2)  # on time until 58 s: before it
    chat = ticket(4, 28.0, tier=0)  # on time until 29.5 s
    for t in (missed, batch, docs, chat):
        policy.add(t, t.arrival_time)
    assert [policy.pop(28.0) for _ in range(4)] == [chat, docs, missed, batch]
    last = SloPolicy(size_share=0.0)  # the default serves it only once nobody on time waits
    for t in (missed, batch, docs, chat):
        last.add(t, t.arrival_time)
    assert [last.pop(28.0) for _ in range(4)] == [chat, docs, batch, missed]


def test_a_request_is_never_ordered_past_its_queue_deadline():
    policy = SloPolicy(size_share=1.0)
    report = ticket(1, 0.0, tier=3, estimate=2000, prompt=1000)  # due at 60 s, offset close to 60 s
    report.deadline = 60.0  # the queue timeout: ordered at 60 s, not at 120 s
    assert policy.key(report) == (60.0,)
    later = ticket(2, 30.0, tier=2, estimate=10, prompt=10)  # due at 60 s as well, tiny
    policy.add(report, 0.0)
    policy.add(later, 30.0)
    assert policy.pop(30.0) is report


def test_rank_is_static_and_matches_the_on_time_order():
    policy = make_policy("slo")
    t = ticket(1, 0.0, tier=2, estimate=500, prompt=300)
    assert policy.rank(t, 0.0) == policy.rank(t, 1e6)  # type: ignore[attr-defined]
    assert policy.rank(t, 0.0)[0] == pytest.approx(30.0 + policy.offset_s(t))  # type: ignore[attr-defined]


def test_a_ticket_without_objectives_takes_its_tiers():
    bare = make_ticket(1, tier=0, arrival=10.0)
    assert math.isinf(bare.ttft_slo_s)
    assert ttft_deadline(bare) == 10.0 + TIER_OBJECTIVES[0].ttft_s


@pytest.mark.parametrize(
    ("options", "message"),
    [({"size_share": 1.5}, "size_share"), ({"size_ref": 0.0}, "size_ref"), ({"late": "drop"}, "late")],
)
def test_bad_options_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        SloPolicy(**options)
