"""Cache-aware placement: the prefix index, the prefill in flight, and each rule's defining behaviour."""

from __future__ import annotations

from typing import Any

import pytest
from factories import make_config, make_scheduler, make_ticket
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from driftsched.core.config import PLACEMENT_RULES, PlacementConfig
from driftsched.core.dispatch import Dispatcher
from driftsched.core.placement import MIN_RATE_S, Capacity, Placement
from driftsched.core.placement_rules import RULES, make_rule
from driftsched.core.request import Ticket

BLOCK = 16
RATE = 1_000.0  # prefill tokens/s of every replica here, until measured


def ticket(seq: int, prompt: int, blocks: int = 0, first_block: int = 0, **kw: Any) -> Ticket:
    """A ticket whose prompt's first `blocks` blocks are hashes first_block, first_block + 1, ..."""
    t = make_ticket(seq, prompt_tokens=prompt, **kw)
    t.prefix_blocks = tuple(range(first_block, first_block + blocks))
    return t


UNBOUNDED = PlacementConfig(balance_slack=1e9)  # `driftsched` without its balance bound


def pool(rule: str, replicas: str = "ab", kv: int = 100_000, slots: int = 64,
         config: PlacementConfig | None = None, **kw: Any) -> Placement:
    p = Placement(kv_watermark=0.0, rule=make_rule(rule, config), block_tokens=BLOCK,
                  prefill_tokens_per_s=RATE, **kw)
    for r in replicas:
        p.report(r, Capacity(slots, slots, kv, (), kv), 0.0)
    return p


def warm(p: Placement, replica: str, t: Ticket, now: float = 0.0) -> None:
    """Run `t` on `replica` to completion: its prefix stays in that replica's index, no load remains."""
    p.grant(replica, t, now)
    p.release(replica, t.request_id, now=now)


def load(p: Placement, replica: str, seq: int, prompt: int) -> Ticket:
    """Grant `prompt` uncached tokens on `replica` that stay in flight (no report shows progress)."""
    t = ticket(seq, prompt, blocks=1, first_block=10_000 + seq)  # a prefix no one else shares
    p.grant(replica, t, 0.0)
    return t


# -- the index and the work in flight ---------------------------------------------------------------


def test_a_grant_puts_its_prefix_in_its_replicas_index_and_a_match_counts_leading_blocks():
    p = pool("most-free-kv")
    warm(p, "a", ticket(1, 100, blocks=6))
    assert p.replica_cached_tokens("a", ticket(2, 200, blocks=10)) == 6 * BLOCK
    assert p.replica_cached_tokens("b", ticket(2, 200, blocks=10)) == 0
    assert p.replica_cached_tokens("a", ticket(3, 200, blocks=3, first_block=500)) == 0  # another head
    assert p.cached_tokens(ticket(4, 40, blocks=6)) == 39  # capped: one token is always computed
    assert p.cached_tokens(ticket(5, 0, blocks=6)) == 0


def test_the_index_forgets_blocks_after_its_ttl_and_holds_at_most_the_replicas_kv():
    p = pool("most-free-kv", kv=10 * BLOCK, index_ttl_s=60.0)
    warm(p, "a", ticket(1, 100, blocks=4), now=0.0)
    assert p.replica_cached_tokens("a", ticket(2, 100, blocks=4), now=59.0) == 4 * BLOCK
    assert p.replica_cached_tokens("a", ticket(2, 100, blocks=4), now=61.0) == 0
    # 10 blocks of room: a 12-block prompt keeps its head (inserted last), the tail is what goes
    warm(p, "a", ticket(3, 300, blocks=12, first_block=100), now=70.0)
    assert p.replica_cached_tokens("a", ticket(4, 300, blocks=12, first_block=100)) == 10 * BLOCK


def test_uncached_prefill_is_in_flight_until_a_report_shows_a_token():
    p = pool("driftsched")
    warm(p, "a", ticket(1, 1000, blocks=50))
    t = ticket(2, 1000, blocks=60)  # 800 tokens cached on a, 200 to prefill
    p.grant("a", t, 1.0)
    state = {s.replica_id: s for s in p.replicas()}["a"]
    assert state.prefill_tokens == 200
    p.report("a", Capacity(64, 63, 90_000, ("r2",), 100_000, progress=(0,)), 1.1)
    assert state.prefill_tokens == 200  # running, no token yet
    p.report("a", Capacity(64, 63, 90_000, ("r2",), 100_000, progress=(1,)), 1.3)
    assert state.prefill_tokens == 0
    p.grant("a", ticket(3, 500), 2.0)
    p.release("a", "r3", now=2.5)  # gone before a report: not in flight any more either
    assert state.prefill_tokens == 0


def test_the_prefill_rate_is_measured_from_reports_once_enough_of_it_was_seen():
    p = pool("driftsched", replicas="a")
    state = next(iter(p.replicas()))
    assert state.rate(RATE) == RATE
    now, seq = 0.0, 0
    while now < 2 * MIN_RATE_S:  # 3,000 tokens prefilled every second
        seq += 1
        p.grant("a", ticket(seq, 3_000), now)
        now += 1.0
        p.report("a", Capacity(64, 63, 90_000, None, 100_000, progress=(1,), progress_ids=(f"r{seq}",)), now)
        p.release("a", f"r{seq}", now=now)
    assert state.rate(RATE) == pytest.approx(3_000.0)
    assert p.summary()["a"]["prefill_tokens_per_s"] == pytest.approx(3_000.0)


def test_kv_shared_with_a_running_grant_is_not_charged_twice_where_the_engine_shares_it():
    shared = pool("most-free-kv", replicas="a", kv=2_000)
    whole = pool("most-free-kv", replicas="a", kv=2_000, shared_kv=False)
    for p in (shared, whole):
        p.grant("a", ticket(1, 1_200, blocks=60), 0.0)  # 960 of its 1,200 tokens in 60 blocks
        p.grant("a", ticket(9, 200), 0.0)  # 600 of 2,000 left
    follower = ticket(2, 1_200, blocks=60)  # the same prefix: 240 new tokens where blocks are shared
    assert shared.choose(follower) == "a"
    assert whole.choose(follower) is None
    shared.release("a", "r1")  # nobody holds the blocks now: reusing them takes them from the free pool
    shared.report("a", Capacity(64, 63, 800, None, 2_000), 1.0)
    assert shared.choose(follower) is None


def test_a_session_without_hashes_finds_its_last_replica():
    p = pool("driftsched", index_ttl_s=60.0, config=UNBOUNDED)
    first = ticket(1, 2_000)
    first.session_id = "s1"
    load(p, "a", 90, 500)  # a is busier, so without the hint b would be chosen
    warm(p, "a", first, now=0.0)
    second = ticket(2, 2_500)
    second.session_id = "s1"
    assert p.replica_cached_tokens("a", second) == 2_000
    assert p.choose(second) == "a"
    assert p.replica_cached_tokens("a", second, now=61.0) == 0  # aged out with the index


# -- each rule's defining behaviour ---------------------------------------------------------------


def test_most_free_kv_ignores_the_cache():
    p = pool("most-free-kv")
    warm(p, "a", ticket(1, 1000, blocks=60))
    load(p, "a", 90, 100)
    assert p.choose(ticket(2, 1000, blocks=60)) == "b"


def test_round_robin_cycles_over_the_replicas_that_fit():
    p = pool("round-robin", replicas="abc")
    chosen = []
    for seq in range(1, 5):
        chosen.append(replica := p.choose(t := ticket(seq, 100)))
        assert replica is not None
        p.grant(replica, t, 0.0)
    assert chosen == ["a", "b", "c", "a"]


def test_ray_prefix_follows_the_longest_match_while_queues_are_balanced():
    p = pool("ray-prefix")
    warm(p, "b", ticket(1, 1000, blocks=10))
    for seq in range(2, 12):  # b holds 10 more requests than a: balanced at a difference of 10
        load(p, "b", seq, 10)
    assert p.choose(ticket(20, 1000, blocks=10)) == "b"
    load(p, "b", 12, 10)  # 11 more: imbalanced, power of two choices among a and b
    assert p.choose(ticket(21, 1000, blocks=10)) == "a"


def test_ray_prefix_below_its_match_rate_goes_to_the_replica_holding_least():
    p = pool("ray-prefix")
    warm(p, "a", ticket(1, 2000, blocks=3, first_block=500))
    warm(p, "b", ticket(2, 2000, blocks=1))
    t = ticket(3, 2000, blocks=100)  # b holds 16 of its 2,000 tokens: under 10 %
    assert p.choose(t) == "b"  # ... and b also holds fewer blocks than a
    warm(p, "b", ticket(4, 2000, blocks=20, first_block=1_000))
    assert p.choose(t) == "a"


def test_llmd_sticky_keeps_a_high_hit_replica_until_its_work_in_flight_passes_tau():
    p = pool("llmd-sticky")
    warm(p, "a", ticket(1, 1_000, blocks=60))  # 960 of 1,000 tokens: 96 % hit
    load(p, "a", 90, 10_000)  # far more queued prefill than the 40 tokens the cache leaves to do
    t = ticket(2, 1_000, blocks=60)
    assert p.choose(t) == "a"  # sticky: tau = 1,000 tok/s x 14 s
    load(p, "a", 91, 4_001)  # 14,001 in flight > tau: saturated, affinity released
    assert p.choose(t) == "b"
    low = ticket(3, 1_000, blocks=40)  # 640 of 1,000 cached on a: under 80 %, never sticky
    p.release("a", "r91")
    assert p.choose(low) == "b"


def test_dynamo_kv_adds_queued_prefill_and_kv_in_use_to_the_uncached_prompt():
    p = pool("dynamo-kv")
    warm(p, "a", ticket(1, 1_000, blocks=60))
    t = ticket(2, 1_000, blocks=60)
    assert p.choose(t) == "a"  # 40 uncached tokens against 1,000
    p.report("a", Capacity(64, 64, 100_000 - 2_000, None, 100_000), 1.0)  # 2,000 tokens of KV in use
    assert p.choose(t) == "b"  # 40 + 2,000 + 1,000 > 1,000 + 0 + 1,000


def test_driftsched_keeps_a_prefix_on_its_replica_until_it_is_saturated_for_that_request():
    p = pool("driftsched", config=PlacementConfig(affinity_slack=0.5, balance_slack=1e9))
    warm(p, "a", ticket(1, 4_000, blocks=200))  # 3,200 of 4,000 tokens cached on a; b would take 4 s
    batch, interactive = ticket(2, 4_000, blocks=200), ticket(3, 4_000, blocks=200)
    batch.ttft_slo_s, interactive.ttft_slo_s = 10.0, 2.0  # kept up to 5 s and 1 s
    load(p, "a", 90, 3_000)  # a: (3,000 + 800) / 1,000 tok/s = 3.8 s, still the soonest
    assert p.choose(batch) == p.choose(interactive) == "a"
    load(p, "a", 91, 500)  # a: 4.3 s; b is sooner, but a is within half the batch request's objective
    assert p.choose(batch) == "a"
    assert p.choose(interactive) == "b"  # past half of 2 s and later than b: saturated for it
    load(p, "a", 92, 800)  # a: 5.1 s, past half of 10 s too
    assert p.choose(batch) == "b"


def test_driftsched_counts_time_at_each_replicas_own_measured_rate():
    p = pool("driftsched", config=UNBOUNDED)
    warm(p, "a", ticket(1, 1_000, blocks=32))  # a holds 512 of a 1,000-token prompt
    load(p, "a", 90, 1_000)
    load(p, "b", 91, 3_000)
    t = ticket(2, 1_000, blocks=60)
    t.ttft_slo_s = 1.0
    assert p.choose(t) == "a"  # a: (1,000 + 488) / 1,000 tok/s = 1.5 s; b: 4 s
    state = {s.replica_id: s for s in p.replicas()}
    state["b"].rate_tokens, state["b"].rate_seconds = 4 * RATE * MIN_RATE_S, MIN_RATE_S  # b is 4x faster
    assert p.choose(t) == "b"  # b: 4,000 / 4,000 tok/s = 1 s (in tokens, a would still win)


def test_driftsched_starts_a_new_context_on_the_replica_running_fewest_requests():
    p = pool("driftsched", replicas="abc", config=UNBOUNDED)  # spread_window_s 0.5
    for seq, r in enumerate("aacc"):
        load(p, r, 90 + seq, 100)
    load(p, "b", 95, 300)  # b runs one request, with the most prefill queued: 0.1 s later than a or c
    fresh = ticket(2, 2_000, blocks=100, first_block=500)  # nobody holds any of it
    assert p.choose(fresh) == "b"
    load(p, "c", 96, 0)  # c runs three now
    load(p, "b", 97, 500)  # b: 2 requests but 0.6 s later than a, out of the window: a (2 requests)
    assert p.choose(fresh) == "a"
    p.release("b", "r97")
    for r in "abc":  # every replica holds its first 2 blocks: still nothing to follow
        warm(p, r, ticket(3, 100, blocks=2, first_block=500))
    assert p.choose(fresh) == "b"
    warm(p, "c", ticket(4, 400, blocks=20, first_block=500))  # c holds 320 tokens, 16 % of the prompt
    assert p.choose(fresh) == "b"
    warm(p, "c", ticket(5, 800, blocks=40, first_block=500))  # 640: 32 %, a prefix worth following
    assert p.choose(fresh) == "c"


def test_driftsched_spreads_a_popular_prefix_by_free_kv_and_copies_it_to_replicas_without_it():
    p = pool("driftsched", replicas="abcd", config=UNBOUNDED)
    for r in "abc":  # three of four hold 1,600 of the 2,000-token prompt: a popular prefix
        warm(p, r, ticket(1, 2_000, blocks=100))
    for r, free in (("a", 50_000), ("b", 90_000), ("c", 70_000), ("d", 40_000)):
        p.report(r, Capacity(64, 64, free, (), 100_000), 1.0)
    hot = ticket(2, 2_000, blocks=100)
    assert p.choose(hot) == "b"  # the holder with the most free KV, not the last holder by id (c)
    p.report("d", Capacity(64, 64, 95_000, (), 100_000), 1.0)
    assert p.choose(hot) == "b"  # d would prefill 1,600 more tokens: 1.6 s, outside the spread window
    fast = pool("driftsched", replicas="abcd", config=PlacementConfig(balance_slack=1e9, spread_window_s=2.0))
    for r in "abc":
        warm(fast, r, ticket(1, 2_000, blocks=100))
    fast.report("d", Capacity(64, 64, 100_000, (), 100_000), 1.0)
    for r in "abc":
        fast.report(r, Capacity(64, 64, 60_000, (), 100_000), 1.0)
    assert fast.choose(hot) == "d"  # within the window, the replica without it takes it: no partition
    two = pool("driftsched", replicas="abcd", config=UNBOUNDED)
    warm(two, "a", ticket(1, 2_000, blocks=100))  # one holder: a context to follow, not a popular prefix
    two.report("b", Capacity(64, 64, 100_000, (), 100_000), 1.0)
    two.report("a", Capacity(64, 64, 50_000, (), 100_000), 1.0)
    assert two.choose(hot) == "a"


def test_driftsched_bounds_each_replicas_recent_work_against_the_pools_mean():
    def followers(config: PlacementConfig) -> tuple[list[str | None], list[float]]:
        p = pool("driftsched", replicas="abcd", config=config, index_ttl_s=1e6)
        warm(p, "a", ticket(1, 2_000, blocks=100), now=-3_600.0)  # a holds the prefix, long idle since
        chosen = []
        for seq in range(2, 122):  # 400 tokens to prefill on a, 2,000 elsewhere; 500 of output
            t, now = ticket(seq, 2_000, blocks=100, estimate=500.0), seq / 4
            chosen.append(replica := p.choose(t, now=now))
            assert replica is not None
            p.grant(replica, t, now)
            done = Capacity(999, 999, 90_000, None, 100_000, progress=(1,), progress_ids=(t.request_id,))
            p.report(replica, done, now)  # its prefill is done: only the recent work tells
        return chosen, [s.recent_work(30.0) for s in p.replicas()]

    chosen, work = followers(PlacementConfig(balance_slack=0.2))
    assert chosen[0] == "a" and set(chosen) == {"a", "b", "c", "d"}
    assert max(work) <= 1.3 * sum(work) / 4  # 1.2x the mean, give or take a request
    chosen, work = followers(UNBOUNDED)
    assert chosen == ["a"] * 120  # no prefill queued on a: soonest there, every time
    assert max(work) == sum(work)


# -- the rules in the core's dispatch ---------------------------------------------------------------


@pytest.mark.parametrize("rule", PLACEMENT_RULES)
def test_no_rule_lets_a_later_ticket_overtake_the_head(rule: str):
    scheduler, _ = make_scheduler("fifo")
    placement = pool(rule, kv=2_000)
    for r in "ab":
        placement.grant(r, ticket(100 + ord(r), 1_500), 0.0)  # both replicas nearly full
    warm(placement, "a", ticket(1, 400, blocks=20))
    head, cached = ticket(2, 1_000), ticket(3, 400, blocks=20)
    for t in (head, cached):
        assert scheduler.admit(t).admitted
    step = Dispatcher(scheduler, placement).step()
    assert step.grants == [] and scheduler.num_queued == 2  # the head fits nowhere: nothing goes


def test_the_dispatcher_records_the_best_cached_prefix_at_admission():
    scheduler, _ = make_scheduler("fifo")
    placement = pool("driftsched")
    Dispatcher(scheduler, placement)
    warm(placement, "b", ticket(1, 1_000, blocks=30))
    t = ticket(2, 1_000, blocks=40)
    assert scheduler.admit(t).admitted
    assert t.cached_tokens == 30 * BLOCK


def _oracle(p: Placement, t: Ticket) -> set[str]:
    return {s.replica_id for s in p.replicas() if p.fits(s, t)}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(PLACEMENT_RULES),
       st.lists(st.tuples(st.sampled_from(("report", "grant", "release", "ask", "new")), st.integers(0, 2),
                          st.integers(0, 3_000)), max_size=50))
def test_choose_remembering_a_head_that_fit_nowhere_agrees_with_a_full_scan(rule: str, ops: list[Any]):
    # As in test_placement, now with shared prefixes (the fit counts KV the grants already hold).
    p = Placement(kv_watermark=0.01, rule=rule, block_tokens=BLOCK)
    head, n, granted = ticket(0, 2_000, blocks=100), 0, []
    for op, r, x in ops:
        replica = "abc"[r]
        if op == "report":
            p.report(replica, Capacity(1 + x % 3, 1 + x % 3, x, None, 3_000), float(n))
        elif op == "grant":
            small = ticket(n := n + 1, x % 2_000, blocks=x % 100)
            if (choice := p.choose(small)) is not None:
                assert choice in _oracle(p, small)
                p.grant(choice, small, float(n))
                granted.append((choice, small.request_id))
        elif op == "release" and granted:
            where, rid = granted.pop(x % len(granted))
            p.release(where, rid, tokens=x)
        elif op == "new":
            head = ticket(n := n + 1, x, blocks=x % 120)
        fitting = _oracle(p, head)
        choice = p.choose(head)
        assert (choice is None) == (not fitting) and (choice is None or choice in fitting)


# -- names and configuration -----------------------------------------------------------------------


def test_rules_are_registered_by_their_config_names_and_an_unknown_name_lists_them():
    assert tuple(RULES) == PLACEMENT_RULES
    with pytest.raises(ValueError, match="most-free-kv"):
        make_rule("least-loaded")
    with pytest.raises(ValidationError, match="choose one of"):
        PlacementConfig(rule="least-loaded")


def test_from_config_builds_the_configured_rule_and_the_bare_constructor_keeps_most_free_kv():
    placement = {"rule": "llmd-sticky", "block_tokens": 512}
    config = make_config(scheduler={"placement": placement, "kv_watermark": 0.02})
    p = Placement.from_config(config.scheduler, block_tokens=None)
    assert p.rule.name == "llmd-sticky" and p.block_tokens == 512 and p.kv_watermark == 0.02
    assert Placement.from_config(config.scheduler, block_tokens=64).block_tokens == 64
    assert Placement().rule.name == "most-free-kv"
    assert PlacementConfig().rule == "driftsched"
