"""The relative SJF policy: overtaken only from a window proportional to size, never once overdue.

The contract tests every registered policy passes live in `test_policies.py`; these check the
promise stated in `policies/relative.py`'s docstring.
"""

from __future__ import annotations

import math

import pytest
from factories import make_ticket
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsched.core.request import Ticket
from policies import RelativeSjfPolicy, make_policy
from policies.sjf import kv_area

HORIZON = 100.0

# One event: add a ticket (estimate, prompt tokens, gap since the last event), or pop one after a gap.
# Adds outnumber pops so that queues build up; sizes and gaps cluster at the extremes.
add = st.tuples(
    st.just("add"),
    st.one_of(st.sampled_from([1.0, 4096.0]), st.floats(1, 4096)),
    st.one_of(st.sampled_from([0, 8000]), st.integers(0, 8000)),
    st.one_of(st.sampled_from([0.0, 0.5 * HORIZON, HORIZON, 1.05 * HORIZON]), st.floats(0, 2 * HORIZON)),
)
pop = st.tuples(st.just("pop"), st.one_of(st.just(0.0), st.floats(0, HORIZON)))
events = st.lists(st.one_of(add, add, add, pop), max_size=150)


@settings(max_examples=500, deadline=None)
@given(
    events=events,
    area_per_s=st.one_of(st.sampled_from([10.0, 1e5]), st.floats(1.0, 1e7)),
    max_wait_s=st.one_of(st.just(math.inf), st.sampled_from([0.0, HORIZON / 2]), st.floats(0, 3 * HORIZON)),
)
def test_overtaken_only_within_its_own_window_and_never_once_overdue(events, area_per_s, max_wait_s):
    policy = RelativeSjfPolicy(area_per_s=area_per_s, horizon_s=HORIZON, max_wait_s=max_wait_s)
    queued: dict[str, Ticket] = {}
    now, seq = 0.0, 0
    for event in events:
        if event[0] == "add":
            _, estimate, prompt, gap = event
            now += gap
            seq += 1
            ticket = make_ticket(seq, estimate=estimate, arrival=now, prompt_tokens=prompt)
            queued[ticket.request_id] = ticket
            policy.add(ticket, now)
            continue
        now += event[1]
        popped = policy.pop(now)
        if popped is None:
            assert not queued
            continue
        del queued[popped.request_id]
        for waiting in queued.values():
            if (waiting.arrival_time, waiting.seq) > (popped.arrival_time, popped.seq):
                continue  # `popped` was earlier: no overtaking
            window = min(HORIZON, kv_area(waiting) / area_per_s)
            assert now - waiting.arrival_time < max_wait_s  # overdue tickets are never overtaken
            assert popped.arrival_time - waiting.arrival_time <= window
    assert len(policy) == len(queued)


def test_large_requests_keep_ordering_by_size_where_bounded_would_not():
    # Two large requests 50 s apart: the later, smaller one goes first (its offset is 100 s shorter).
    policy = RelativeSjfPolicy(area_per_s=10_000.0)
    code = make_ticket(1, estimate=2000, arrival=0.0, prompt_tokens=900)  # area 3.8M: offset 380 s
    article = make_ticket(2, estimate=1000, arrival=50.0, prompt_tokens=250)  # area 0.75M: offset 75 s
    for ticket in (code, article):
        policy.add(ticket, ticket.arrival_time)
    assert policy.pop(60.0) is article and policy.pop(60.0) is code


def test_overdue_ticket_goes_first_then_arrival_order_among_overdue():
    policy = RelativeSjfPolicy(area_per_s=100.0, max_wait_s=30.0)
    big = make_ticket(1, estimate=3000, arrival=0.0, prompt_tokens=1000)
    big2 = make_ticket(2, estimate=3000, arrival=1.0, prompt_tokens=1000)
    small = make_ticket(3, estimate=5, arrival=20.0, prompt_tokens=10)
    for ticket in (big, big2, small):
        policy.add(ticket, ticket.arrival_time)
    assert policy.peek(25.0) is small  # nobody has waited 30 s yet: size order
    assert policy.pop(31.0) is big  # big waited 31 s: overdue
    assert policy.pop(31.0) is big2 and policy.pop(31.0) is small


def test_removed_tickets_leave_both_orders():
    policy = RelativeSjfPolicy(max_wait_s=10.0)
    tickets = [make_ticket(i, estimate=100, arrival=float(i), prompt_tokens=100) for i in range(1, 200)]
    for ticket in tickets:
        policy.add(ticket, ticket.arrival_time)
    for ticket in tickets[:-1]:
        assert policy.remove(ticket)
    assert len(policy) == 1 and policy.pop(1e6) is tickets[-1] and policy.pop(1e6) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"area_per_s": 0}, "area_per_s must be > 0"),
        ({"horizon_s": -1}, "horizon_s must be > 0"),
        ({"max_wait_s": -5}, "max_wait_s must be >= 0"),
    ],
)
def test_bad_options_say_what_to_use(options, message):
    with pytest.raises(ValueError, match=message):
        make_policy("relative", **options)
