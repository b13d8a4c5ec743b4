"""Scheduler core: admission decisions, quotas, queue caps, lifecycle and the stats snapshot."""

from __future__ import annotations

import pytest
from factories import make_scheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from driftsched.core.config import TenantConfig
from driftsched.core.errors import UnknownRequestError
from driftsched.core.request import RejectReason, Request
from policies import POLICIES


def req(i: int, tenant: str = "a", prompt: int = 100, max_tokens: int = 512, **kw) -> Request:
    return Request(f"r{i}", tenant, prompt, max_tokens, arrival_time=0.0, **kw)


def test_admitted_request_gets_a_classified_estimated_ticket():
    sched, _ = make_scheduler("fifo")
    adm = sched.submit(req(1, category="code", max_tokens=2048))
    assert adm.admitted and adm.reason is None
    t = adm.ticket
    assert (t.category, t.raw_estimate, t.corrected_estimate) == ("code", 384.0, 384.0)
    assert t.tier == 1 and t.seq == 1
    assert sched.num_queued == 1 and sched.is_queued("r1")


@pytest.mark.parametrize(
    ("request_", "reason", "detail"),
    [
        (req(1, tenant="mallory"), RejectReason.UNKNOWN_TENANT, "unknown tenant"),
        (req(1, prompt=-1), RejectReason.INVALID, "prompt_tokens"),
        (req(1, max_tokens=0), RejectReason.INVALID, "max_tokens"),
        (req(1, prompt=32000, max_tokens=2000), RejectReason.INVALID, "context limit"),
    ],
)
def test_invalid_requests_are_rejected_with_a_reason(request_, reason, detail):
    sched, _ = make_scheduler("fifo")
    adm = sched.submit(request_)
    assert not adm.admitted and adm.reason is reason and detail in adm.detail
    assert sched.num_queued == 0


def test_request_quota_rejects_then_refills():
    sched, clock = make_scheduler("fifo", TenantConfig(name="a", requests_per_minute=6))
    assert all(sched.submit(req(i)).admitted for i in range(6))
    adm = sched.submit(req(6))
    assert adm.reason is RejectReason.REQUEST_QUOTA
    assert adm.retry_after_s == pytest.approx(10.0)  # one request refills every 10 s
    clock.advance(10.0)
    assert sched.submit(req(7)).admitted
    assert sched.snapshot().counters["a"].rejected == {"tenant_request_quota": 1}


def test_token_quota_charges_estimate_and_settles_on_completion():
    sched, _ = make_scheduler("fifo", TenantConfig(name="a", tokens_per_minute=1000))
    # cost = prompt 100 + chat prior 256 = 356 tokens each
    assert sched.submit(req(1)).admitted and sched.submit(req(2)).admitted
    adm = sched.submit(req(3))
    assert adm.reason is RejectReason.TOKEN_QUOTA and adm.retry_after_s > 0
    t = sched.dispatch()
    sched.complete(t.request_id, 6)  # used 250 tokens fewer than charged
    assert sched.submit(req(4)).admitted


def test_quota_rejection_charges_nothing():
    sched, _ = make_scheduler("fifo", TenantConfig(name="a", requests_per_minute=2, tokens_per_minute=400))
    assert sched.submit(req(1)).admitted
    assert sched.submit(req(2)).reason is RejectReason.TOKEN_QUOTA
    # The token rejection did not consume the request quota: a cheap request still passes.
    assert sched.submit(req(3, prompt=0, max_tokens=10)).admitted


def test_tenant_queue_cap_and_system_overload():
    sched, _ = make_scheduler(
        "fifo",
        TenantConfig(name="a", max_queued=2),
        TenantConfig(name="b"),
        scheduler={"max_queued_total": 3},
    )
    assert sched.submit(req(1)).admitted and sched.submit(req(2)).admitted
    full = sched.submit(req(3))
    assert full.reason is RejectReason.TENANT_QUEUE_FULL and full.retry_after_s
    assert sched.submit(req(4, tenant="b")).admitted
    over = sched.submit(req(5, tenant="b"))
    assert over.reason is RejectReason.OVERLOADED and over.retry_after_s == 1.0
    sched.dispatch()
    assert sched.submit(req(6, tenant="b")).admitted


def test_duplicate_ids_are_refused():
    sched, _ = make_scheduler("fifo")
    assert sched.submit(req(1)).admitted
    assert sched.submit(req(1)).reason is RejectReason.INVALID


def test_cancel_only_touches_queued_requests():
    sched, _ = make_scheduler("sjf")
    for i in range(3):
        sched.submit(req(i))
    assert sched.cancel("r1").request_id == "r1"
    assert sched.cancel("r1") is None and sched.cancel("nope") is None
    t = sched.dispatch()
    assert sched.cancel(t.request_id) is None  # in flight: the caller aborts it instead
    assert sched.abort(t.request_id) is t and sched.abort(t.request_id) is None
    assert [sched.dispatch().request_id, sched.dispatch()] == ["r2", None]


def test_deadlines_expire_queued_requests():
    sched, clock = make_scheduler("fifo")
    sched.submit(req(1, deadline=5.0))
    sched.submit(req(2, deadline=50.0))
    sched.submit(req(3))
    clock.advance(6.0)
    assert [t.request_id for t in sched.expire_due()] == ["r1"]
    assert sched.dispatch().request_id == "r2"
    clock.advance(100.0)
    assert sched.dispatch().request_id == "r3"
    assert sched.snapshot().counters["a"].expired == 1


def test_tickets_expired_by_peek_or_dispatch_are_returned_once_by_expire_due():
    # The caller answers what expire_due returns (a waiter's 504); a ticket that peek or dispatch
    # found overdue must reach it too, or its waiter is never answered.
    sched, clock = make_scheduler("fifo")
    sched.submit(req(1, deadline=5.0))
    sched.submit(req(2, deadline=6.0))
    sched.submit(req(3))
    clock.advance(5.5)
    assert sched.peek().request_id == "r2"
    clock.advance(1.0)
    assert sched.dispatch().request_id == "r3"
    assert [t.request_id for t in sched.expire_due()] == ["r1", "r2"]
    assert sched.expire_due() == []
    assert sched.snapshot().counters["a"].expired == 2


def test_completion_feeds_drift_and_later_estimates():
    sched, clock = make_scheduler("sjf")
    for i in range(60):
        sched.submit(req(i, category="code", max_tokens=4096))
        t = sched.dispatch()
        clock.advance(1.0)
        sched.complete(t.request_id, 1152)  # code answers are 3x the 384 prior
    t = sched.submit(req(99, category="code", max_tokens=4096)).ticket
    assert t.raw_estimate == 384.0 and t.corrected_estimate == pytest.approx(1152, rel=0.05)
    with pytest.raises(UnknownRequestError):
        sched.complete("r0", 10)


def test_snapshot_reports_queues_counters_and_drift():
    sched, _ = make_scheduler("weighted")
    for i in range(4):
        sched.submit(req(i, tenant="ab"[i % 2], category="qa", max_tokens=32))
    t = sched.dispatch()
    sched.complete(t.request_id, 32)
    sched.dispatch()
    snap = sched.snapshot()
    assert snap.policy == "weighted"
    assert sum(snap.queued.values()) == 2 and sum(snap.in_flight.values()) == 1
    assert snap.counters[t.tenant].completed == 1
    assert snap.drift_total.count == 1
    assert snap.to_dict()["drift"][0]["category"] == "qa"


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=30, deadline=None)
@given(
    actions=st.lists(
        st.tuples(st.sampled_from(["submit", "dispatch", "cancel", "tick"]), st.integers(0, 50)),
        max_size=120,
    )
)
def test_every_admitted_request_leaves_the_queue_once(name, actions):
    sched, clock = make_scheduler(name, TenantConfig(name="a", max_queued=20), TenantConfig(name="b"))
    admitted, dispatched, cancelled = set(), [], set()
    for i, (action, arg) in enumerate(actions):
        if action == "submit":
            r = req(i, tenant="ab"[arg % 2], prompt=arg * 10, deadline=clock() + arg)
            if sched.submit(r).admitted:
                admitted.add(r.request_id)
        elif action == "dispatch" and (t := sched.dispatch()) is not None:
            dispatched.append(t.request_id)
        elif action == "cancel" and sched.cancel(f"r{arg}") is not None:
            cancelled.add(f"r{arg}")
        elif action == "tick":
            clock.advance(arg / 10)
    expired = {t.request_id for t in sched.expire_due()}
    while (t := sched.dispatch()) is not None:
        dispatched.append(t.request_id)
    snap = sched.snapshot()
    expired_total = sum(c.expired for c in snap.counters.values())
    assert len(dispatched) == len(set(dispatched))
    assert set(dispatched) | cancelled | expired <= admitted
    assert len(dispatched) + len(cancelled) + expired_total == len(admitted)
    assert sched.num_queued == 0


def test_admission_reads_the_cached_prefix_once_into_the_ticket():
    """The scheduler asks its placement how much of the prompt is cached, at admission only."""
    s, _ = make_scheduler()
    asked: list[str] = []

    def lookup(ticket):
        asked.append(ticket.request_id)
        return 10_000  # more than the prompt: an engine still computes one token

    s.prefix_lookup = lookup
    hashed = s.submit(Request("h", "a", 600, 64, 0.0, prefix_blocks=(1, 2)))
    plain = s.submit(Request("p", "a", 600, 64, 0.0))
    assert asked == ["h"]  # a ticket without hashes has nothing to look up
    assert hashed.ticket.cached_tokens == 599 and hashed.ticket.uncached_prompt == 1
    assert plain.ticket.cached_tokens == 0 and plain.ticket.uncached_prompt == 600
