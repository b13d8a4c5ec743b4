"""The bounded SJF policy: smallest first inside the horizon, never overtaken from beyond it.

The contract tests every registered policy passes live in `test_policies.py`; these check the
promise stated in `policies/bounded.py`'s docstring.
"""

from __future__ import annotations

import pytest
from factories import make_ticket
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsched.core.policy import PolicyContext
from driftsched.core.request import Ticket
from policies import BoundedSjfPolicy, make_policy, resolve_options
from policies.sjf import kv_area

HORIZON = 100.0

# One event: add a ticket (tenant, estimate, prompt tokens, gap since the last arrival), or pop one.
# Adds outnumber pops so that queues build up; sizes and gaps cluster at the extremes, where a
# violation of the bound would show.
add = st.tuples(
    st.just("add"),
    st.sampled_from("abc"),
    st.one_of(st.sampled_from([1.0, 4096.0]), st.floats(1, 4096)),
    st.one_of(st.sampled_from([0, 8000]), st.integers(0, 8000)),
    st.one_of(
        st.sampled_from([0.0, 0.5 * HORIZON, 0.525 * HORIZON, HORIZON, 1.05 * HORIZON]),
        st.floats(0, 2 * HORIZON),
    ),
)
events = st.lists(st.one_of(add, add, add, st.tuples(st.just("pop"))), max_size=150)


@settings(max_examples=500, deadline=None)
@given(
    events=events,
    caps=st.dictionaries(
        st.sampled_from("ab"), st.one_of(st.sampled_from([0.0, HORIZON / 2]), st.floats(0, 2 * HORIZON))
    ),
    size_ref=st.one_of(st.sampled_from([1e3, 1e5]), st.floats(1.0, 1e7)),
)
def test_never_overtaken_by_a_ticket_that_arrived_a_bound_later(events, caps, size_ref):
    policy = BoundedSjfPolicy(horizon_s=HORIZON, size_ref=size_ref, tenant_horizon_s=caps)
    queued: dict[str, Ticket] = {}
    now, seq = 0.0, 0
    for event in events:
        if event[0] == "add":
            _, tenant, estimate, prompt, gap = event
            now += gap
            seq += 1
            ticket = make_ticket(seq, tenant=tenant, estimate=estimate, arrival=now, prompt_tokens=prompt)
            queued[ticket.request_id] = ticket
            policy.add(ticket, now)
            continue
        popped = policy.pop(now)
        if popped is None:
            assert not queued
            continue
        del queued[popped.request_id]
        for waiting in queued.values():  # everyone still queued was overtaken by `popped`
            bound = min(HORIZON, caps.get(waiting.tenant, HORIZON))
            assert popped.arrival_time - waiting.arrival_time < bound or (
                popped.arrival_time == waiting.arrival_time and popped.seq < waiting.seq
            )


# Both size-aware policies with a head start (`relative`'s offsets all below its horizon here).
SIZE_AWARE = pytest.mark.parametrize(
    ("name", "options"), [("bounded", {}), ("relative", {"area_per_s": 1e5})]
)


@SIZE_AWARE
@settings(max_examples=50, deadline=None)
# Whole tokens: sizes a rounding error apart may share a key, and ties go to admission order.
@given(estimates=st.lists(st.integers(1, 4096).map(float), min_size=1, max_size=60))
def test_smallest_area_first_among_simultaneous_arrivals(name, options, estimates):
    policy = make_policy(name, **options)
    for seq, estimate in enumerate(estimates, 1):
        ticket = make_ticket(seq, estimate=estimate, arrival=0.0, prompt_tokens=500)
        ticket.raw_estimate = 5000 - estimate  # only the corrected estimate may matter
        policy.add(ticket, 0.0)
    order = []
    while (ticket := policy.pop(0.0)) is not None:
        order.append(ticket.corrected_estimate)
    assert order == sorted(estimates)


def test_small_request_passes_a_large_one_inside_the_horizon_only():
    policy = BoundedSjfPolicy(horizon_s=HORIZON, size_ref=10_000.0)
    large = make_ticket(1, estimate=2000, arrival=0.0, prompt_tokens=2000)  # u close to 1
    soon = make_ticket(2, estimate=20, arrival=HORIZON / 2, prompt_tokens=100)  # u close to 0
    late = make_ticket(3, estimate=1, arrival=HORIZON, prompt_tokens=0)  # the smallest, right at the bound
    for ticket in (large, soon, late):
        policy.add(ticket, ticket.arrival_time)
    assert [policy.pop(200.0), policy.pop(200.0), policy.pop(200.0)] == [soon, large, late]


def test_long_prompts_count_as_larger():
    # Same output estimate: the request holding more KV (longer prompt) goes later.
    policy = make_policy("bounded")
    summary = make_ticket(1, estimate=200, arrival=0.0, prompt_tokens=2000)
    chat = make_ticket(2, estimate=200, arrival=1.0, prompt_tokens=300)
    policy.add(summary, 0.0)
    policy.add(chat, 1.0)
    assert policy.pop(1.0) is chat


def test_tenant_horizon_bounds_that_tenants_wait_behind_later_traffic():
    policy = BoundedSjfPolicy(horizon_s=1000.0, size_ref=1000.0, tenant_horizon_s={"slo": 5.0})
    big_slo = make_ticket(1, tenant="slo", estimate=3000, arrival=0.0, prompt_tokens=1000)
    big_other = make_ticket(2, tenant="other", estimate=3000, arrival=0.0, prompt_tokens=1000)
    small = make_ticket(3, tenant="x", estimate=10, arrival=10.0, prompt_tokens=10)
    for ticket in (big_slo, big_other, small):
        policy.add(ticket, ticket.arrival_time)
    # "small" arrived 10 s later: beyond the 5 s bound of "slo", inside the 1000 s one of "other".
    assert [policy.pop(10.0) for _ in range(3)] == [big_slo, small, big_other]
    assert policy.bound_s(big_slo) == 5.0 and policy.bound_s(big_other) == 1000.0


def test_tenant_horizon_keeps_that_tenants_requests_in_size_order():
    # Every request of "slo" is large enough that a clipped offset would hit the 5 s cap and leave
    # them in arrival order; the scaled horizon keeps the smaller one first.
    policy = BoundedSjfPolicy(horizon_s=1000.0, size_ref=100_000.0, tenant_horizon_s={"slo": 5.0})
    larger = make_ticket(1, tenant="slo", estimate=2000, arrival=0.0, prompt_tokens=100)
    smaller = make_ticket(2, tenant="slo", estimate=200, arrival=1.0, prompt_tokens=100)
    for ticket in (larger, smaller):
        policy.add(ticket, ticket.arrival_time)
    assert policy.pop(1.0) is smaller
    assert 0 < policy.offset_s(smaller) < policy.offset_s(larger) < 5.0


def test_offset_stays_below_the_horizon_and_grows_with_size():
    policy = BoundedSjfPolicy(horizon_s=HORIZON, size_ref=75_000.0)
    tickets = [make_ticket(i, estimate=e, prompt_tokens=900) for i, e in enumerate((1, 50, 500, 4000), 1)]
    offsets = [policy.offset_s(t) for t in tickets]
    assert offsets == sorted(offsets) and all(0 < o < HORIZON for o in offsets)
    assert policy.offset_s(tickets[1]) == pytest.approx(
        HORIZON * kv_area(tickets[1]) / (kv_area(tickets[1]) + 75_000.0)
    )


@SIZE_AWARE
def test_rank_is_the_static_heap_order(name, options):
    policy = make_policy(name, **options)
    tickets = [make_ticket(i, estimate=(i * 37) % 500 + 1, prompt_tokens=i * 13) for i in range(1, 30)]
    for ticket in tickets:
        policy.add(ticket, ticket.arrival_time)
    ranks = [policy.rank(t, 0.0) for t in tickets]  # type: ignore[attr-defined]
    order = []
    while (ticket := policy.pop(1e9)) is not None:
        order.append(ticket)
    assert order == [t for _, t in sorted(zip(ranks, tickets, strict=True), key=lambda p: p[0])]
    assert [policy.rank(t, 5e9) for t in tickets] == ranks  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"horizon_s": 0}, "horizon_s must be > 0"),
        ({"size_ref": -1}, "size_ref must be > 0"),
        ({"tenant_horizon_s": {"a": -5}}, "tenant_horizon_s must be >= 0"),
    ],
)
def test_bad_options_say_what_to_use(options, message):
    with pytest.raises(ValueError, match=message):
        make_policy("bounded", **options)


def test_the_horizon_is_the_queue_timeout_and_a_tenants_its_latency_objective():
    context = PolicyContext(queue_timeout_s=45.0, latency_slo_s={"slo": 5.0, "other": 30.0})
    derived = resolve_options("bounded", {}, context)
    assert derived == {"horizon_s": 45.0, "tenant_horizon_s": {"slo": 5.0, "other": 30.0}}
    policy = make_policy("bounded", **derived)
    assert policy.bound_s(make_ticket(1, tenant="slo")) == 5.0  # type: ignore[attr-defined]
    assert policy.bound_s(make_ticket(2, tenant="none")) == 45.0  # type: ignore[attr-defined]


def test_given_options_win_over_derived_ones_tenant_by_tenant():
    context = PolicyContext(queue_timeout_s=45.0, latency_slo_s={"slo": 5.0, "other": 30.0})
    given = {"horizon_s": 20.0, "tenant_horizon_s": {"other": 2.0, "new": 1.0}}
    assert resolve_options("bounded", given, context) == {
        "horizon_s": 20.0,
        "tenant_horizon_s": {"slo": 5.0, "other": 2.0, "new": 1.0},
    }
