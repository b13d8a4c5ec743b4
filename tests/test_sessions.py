"""The sessions workload: contexts that grow turn by turn, blocks that extend the previous turn's,
think times, the context bound, tenant shares and the offered load."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from driftsched.sim.perf_model import PerfModel
from driftsched.sim.sessions import (
    CONTEXT_TOKENS,
    DECODE_BATCH,
    DECODE_CONTEXT,
    SESSION_PROFILES,
    sessions_workload,
)
from driftsched.sim.workload import BLOCK_TOKENS, measured_capacity_rps

PROFILE = {p.spec.name: p for p in SESSION_PROFILES}


@pytest.fixture(scope="module")
def workload():
    return sessions_workload(4000, seed=3, replicas=4, load=1.0)


def by_session(workload):
    turns = defaultdict(list)
    for it in workload.items:
        if it.session_id is not None:
            turns[it.session_id].append(it)
    return turns


def test_items_are_valid_sorted_and_bounded(workload):
    items = workload.items
    assert len(items) == 4000 and items[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in pairwise(items))
    assert workload.block_tokens == BLOCK_TOKENS
    assert {t.tier for t in workload.tenants} == {0, 1, 2, 3}
    for it in items:
        assert 1 <= it.output_tokens <= it.max_tokens == PROFILE[it.tenant].max_tokens
        assert it.prompt_tokens + it.max_tokens <= CONTEXT_TOKENS
        assert len(it.prefix_blocks) == it.prompt_tokens // workload.block_tokens


def test_next_turn_extends_the_context_and_its_blocks(workload):
    sessions = by_session(workload)
    assert len(sessions) > 100
    pairs = 0
    for turns in sessions.values():
        assert len({t.tenant for t in turns}) == 1
        for a, b in pairwise(turns):
            assert b.prompt_tokens > a.prompt_tokens + a.output_tokens  # the answer and a new message
            assert b.prefix_blocks[: len(a.prefix_blocks)] == a.prefix_blocks
            pairs += 1
    assert pairs > 1000


def test_sessions_share_only_their_tenants_system_prompt(workload):
    bt = workload.block_tokens
    first_owner: dict[int, str] = {}
    for sid, turns in by_session(workload).items():
        tenant = turns[0].tenant
        head = PROFILE[tenant].system_tokens // bt
        for h in turns[-1].prefix_blocks[head:]:
            assert first_owner.setdefault(h, sid) == sid
    heads = {
        it.tenant: it.prefix_blocks[: PROFILE[it.tenant].system_tokens // bt]
        for it in workload.items
        if it.prompt_tokens >= PROFILE[it.tenant].system_tokens
    }
    for it in workload.items:
        n = min(PROFILE[it.tenant].system_tokens, it.prompt_tokens) // bt
        assert it.prefix_blocks[:n] == heads[it.tenant][:n]
    assert len({h[0] for h in heads.values()}) == len(heads) == 4


def test_a_turn_waits_for_the_answer_and_the_think_time(workload):
    token_s = PerfModel().decode_step_s(DECODE_BATCH, DECODE_CONTEXT)
    gaps = defaultdict(list)
    for turns in by_session(workload).values():
        for a, b in pairwise(turns):
            assert b.arrival_s - a.arrival_s > a.output_tokens * token_s
            gaps[a.tenant].append(b.arrival_s - a.arrival_s - a.output_tokens * token_s)
    median = {t: sorted(g)[len(g) // 2] for t, g in gaps.items()}
    for tenant, think in median.items():  # the stated medians, within sampling error
        assert think == pytest.approx(PROFILE[tenant].think_s[0], rel=0.25), tenant


def test_shares_sessions_and_one_shot_tenant(workload):
    counts = Counter(it.tenant for it in workload.items)
    for name, prof in PROFILE.items():
        assert counts[name] / len(workload.items) == pytest.approx(prof.share, abs=0.05), name
    one_shot = [it for it in workload.items if it.tenant == "batch-summaries"]
    assert one_shot and all(it.session_id is None for it in one_shot)
    turns = defaultdict(list)
    for v in by_session(workload).values():
        turns[v[0].tenant].append(len(v))
    multi_turn = {t for t, p in PROFILE.items() if p.mean_turns > 1}
    assert set(turns) == multi_turn and all(sum(n) / len(n) > 2 for n in turns.values())


def test_arrival_rate_follows_load(workload):
    items = workload.items
    rate = (len(items) - 1) / (items[-1].arrival_s - items[0].arrival_s)
    assert rate == pytest.approx(1.0 * 4 * measured_capacity_rps(PerfModel(), items), rel=0.1)
    heavier = sessions_workload(4000, seed=3, replicas=4, load=2.0)
    assert heavier.items[-1].arrival_s == pytest.approx(items[-1].arrival_s / 2, rel=0.15)


def test_deterministic_per_seed_and_without_blocks():
    a, b = sessions_workload(500, seed=1), sessions_workload(500, seed=1)
    assert a.items == b.items
    assert sessions_workload(500, seed=2).items != a.items
    plain = sessions_workload(500, seed=1, block_tokens=0)
    assert plain.block_tokens == 0 and all(not it.prefix_blocks for it in plain.items)
    assert [(it.arrival_s, it.prompt_tokens, it.output_tokens) for it in plain.items] == [
        (it.arrival_s, it.prompt_tokens, it.output_tokens) for it in a.items
    ]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="load"):
        sessions_workload(100, load=0.0)
