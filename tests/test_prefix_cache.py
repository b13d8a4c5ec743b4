"""The simulated engine's prefix cache: hits skip prefill, whole blocks only, LRU eviction in the free KV,
pinned blocks kept, re-admissions counted, and ``block_tokens=0`` changing nothing.

Each test builds a real `ContinuousBatchEngine` on a small cache and steps it by hand; expected times
come from the performance model's formula, not from the engine.
"""

from __future__ import annotations

import pytest

from driftsched.sim.engine import ContinuousBatchEngine, EngineSequence
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.prefix_cache import PrefixCache
from driftsched.sim.sessions import sessions_workload
from driftsched.sim.workload import paper_workload

BT = 10  # tokens per block in these tests


def ids(start: int, n: int) -> tuple[int, ...]:
    return tuple(range(start, start + n))


def engine_with(kv_capacity: int | None = None, block_tokens: int = BT, **perf_kwargs):
    perf = PerfModel(**perf_kwargs)
    if kv_capacity is not None:
        perf.kv_capacity_tokens = kv_capacity
    return ContinuousBatchEngine(perf, block_tokens)


def run_until(engine, predicate, now=0.0, horizon_s=0.0):
    """Step until ``predicate(events)``; returns the time then."""
    while True:
        duration, events = engine.step(horizon_s)
        now += duration
        if predicate(events):
            return now


def finish(engine, seq, now=0.0):
    """Step until ``seq`` (in the engine already) finishes."""
    return run_until(engine, lambda ev: seq in ev.finished, now)


def serve(engine, seq):
    """Add ``seq`` and step until it finishes."""
    engine.add(seq)
    return finish(engine, seq)


def test_repeated_prefix_skips_its_prefill():
    engine = engine_with(block_tokens=256)  # a 4,000-token prompt: 15 whole blocks, two 2,048 chunks
    perf = engine.perf
    first = EngineSequence("a", 4000, 3, ids(1, 16))
    engine.add(first)
    ttft_first = run_until(engine, lambda ev: first in ev.first_token)
    chunks = perf.step_time_s(2048, 0, 0, 2048 * 1024) + perf.step_time_s(1952, 0, 2048, 1952 * (2048 + 976))
    assert ttft_first == pytest.approx(chunks)
    finish(engine, first)
    assert engine.cached_prefix_blocks(ids(1, 16)) == 15 and engine.num_cached_blocks == 15

    # The same first 12 blocks, then its own: 3,072 tokens come from the cache, 928 are prefilled.
    second = EngineSequence("b", 4000, 3, ids(1, 12) + ids(50, 4))
    engine.add(second)
    ttft_second = run_until(engine, lambda ev: second in ev.first_token)
    assert second.cached_tokens == 3072 and first.cached_tokens == 0
    assert ttft_second == pytest.approx(perf.step_time_s(928, 0, 3072, 928 * (3072 + 928 / 2)))
    assert ttft_second < 0.5 * ttft_first
    assert (engine.prefix_query_tokens, engine.prefix_hit_tokens) == (8000, 3072)


def test_a_full_hit_still_computes_one_token():
    engine = engine_with()
    serve(engine, EngineSequence("a", 60, 2, ids(1, 6)))
    again = EngineSequence("b", 60, 2, ids(1, 6))  # every block cached: the last token is recomputed
    serve(engine, again)
    assert again.cached_tokens == 59
    assert engine.kv_used == 0 and engine.held_tokens == 0


def test_only_whole_prompt_blocks_are_cached_or_matched():
    engine = engine_with()
    # 45 tokens are 4 whole blocks; a fifth id (a partial block, as Mooncake lists one) is ignored.
    serve(engine, EngineSequence("a", 45, 2, ids(1, 5)))
    assert engine.num_cached_blocks == 4 and engine.cached_prefix_blocks(ids(1, 5)) == 4
    longer = EngineSequence("b", 200, 2, ids(1, 20))
    engine.add(longer)
    run_until(engine, lambda ev: longer in ev.first_token)
    assert longer.cached_tokens == 40


def test_blocks_enter_the_cache_when_the_prompt_is_done():
    engine = engine_with(max_num_batched_tokens=32)  # a 100-token prompt takes four chunks
    seq = EngineSequence("a", 100, 5, ids(1, 10))
    engine.add(seq)
    engine.step()
    engine.step()
    assert engine.cached_prefix_blocks(seq.blocks) == 0  # half prefilled: nothing reusable yet
    run_until(engine, lambda ev: seq in ev.first_token)
    assert engine.cached_prefix_blocks(seq.blocks) == 10


def test_evictable_blocks_fit_the_free_kv_and_go_from_the_chain_end():
    engine = engine_with(kv_capacity=200)
    a = EngineSequence("a", 100, 1, ids(1, 10))
    serve(engine, a)
    assert engine.cached_prefix_blocks(a.blocks) == 10  # the whole KV is free: all kept
    b = EngineSequence("b", 150, 20, ids(100, 15))  # unrelated prompt: fills 150 of 200 tokens
    engine.add(b)
    run_until(engine, lambda ev: b in ev.first_token)
    # 50 tokens free once b's prompt is in: 5 of a's 10 blocks fit, and they are its head.
    assert engine.kv_used == 150
    assert engine.cached_prefix_blocks(a.blocks) == 5
    assert engine.num_cached_blocks == 15 + 5
    for _ in range(11):  # b's KV grows by a token a step: a's head shrinks with the free KV
        engine.step()
    assert engine.kv_used == 161 and engine.cached_prefix_blocks(a.blocks) == 3


def test_least_recently_released_is_evicted_first():
    engine = engine_with(kv_capacity=200)
    a = EngineSequence("a", 50, 1, ids(1, 5))
    c = EngineSequence("c", 50, 1, ids(20, 5))
    serve(engine, a)
    serve(engine, c)
    hog = EngineSequence("hog", 120, 30, ids(100, 12))  # leaves 80 free: 8 of the 10 cached blocks
    engine.add(hog)
    run_until(engine, lambda ev: hog in ev.first_token)
    assert engine.cached_prefix_blocks(c.blocks) == 5
    assert engine.cached_prefix_blocks(a.blocks) == 3


def test_blocks_of_running_sequences_are_never_evicted():
    engine = engine_with(kv_capacity=300)
    serve(engine, EngineSequence("warm", 100, 1, ids(1, 10)))
    holder = EngineSequence("holder", 100, 150, ids(1, 10))  # takes the warm blocks: pinned, not evictable
    engine.add(holder)
    run_until(engine, lambda ev: holder in ev.first_token)
    assert holder.cached_tokens == 99 and engine.num_cached_blocks == 10
    filler = EngineSequence("filler", 90, 100, ids(500, 9))
    engine.add(filler)
    run_until(engine, lambda ev: engine.kv_capacity - engine.kv_used < BT)  # no room for one block
    assert holder in engine.running and filler in engine.running
    assert engine.cached_prefix_blocks(holder.blocks) == 10  # pinned: still there
    assert engine.num_cached_blocks == 10 + 9  # the two running prompts', nothing evictable
    finish(engine, filler)
    reader = EngineSequence("reader", 120, 2, ids(1, 12))  # shares the holder's 10 blocks
    engine.add(reader)
    run_until(engine, lambda ev: reader in ev.first_token)
    assert reader.cached_tokens == 100


def test_preempted_sequence_hits_again_and_both_admissions_count():
    engine = engine_with(kv_capacity=250)
    a = EngineSequence("a", 100, 60, ids(1, 10))
    b = EngineSequence("b", 100, 60, ids(1, 10))  # the same prompt: a's blocks, pinned while a runs
    engine.add(a)
    run_until(engine, lambda ev: a in ev.first_token)
    engine.add(b)
    now = run_until(engine, lambda ev: b in ev.preempted)  # 2 x 160 tokens do not fit 250
    finish(engine, a, now)
    finish(engine, b, now)
    assert engine.num_preemptions >= 1
    assert (a.cached_tokens, b.cached_tokens) == (0, 99)
    # b's re-admission found the prompt again (a held it) and recomputed only its generated tokens.
    assert engine.prefix_hit_tokens >= 99 + 100
    assert engine.kv_used == 0 and engine.held_tokens == 0


def test_block_tokens_zero_ignores_blocks():
    items = paper_workload(400, seed=5, replicas=1, load=1.0).items
    timelines = []
    for with_blocks in (False, True):
        engine = ContinuousBatchEngine(PerfModel())
        seqs = [
            EngineSequence(i, it.prompt_tokens, it.output_tokens, it.prefix_blocks if with_blocks else ())
            for i, it in enumerate(items)
        ]
        for s in seqs:
            engine.add(s)
        now, times = 0.0, []
        while not engine.is_idle:
            duration, events = engine.step(1.0)
            now += duration
            times.append((now, [s.request_id for s in events.first_token + events.finished]))
        timelines.append(times)
        assert engine.prefix_query_tokens == engine.prefix_hit_tokens == engine.num_cached_blocks == 0
        assert all(s.cached_tokens == 0 for s in seqs)
    assert timelines[0] == timelines[1]


def test_negative_block_tokens_rejected():
    with pytest.raises(ValueError, match="block_tokens"):
        ContinuousBatchEngine(PerfModel(), -1)


def test_fused_decode_equals_single_steps_with_the_cache():
    workload = sessions_workload(300, seed=2, replicas=1)

    def run(horizon_s):
        engine = ContinuousBatchEngine(PerfModel(), workload.block_tokens)
        for i, it in enumerate(workload.items):
            engine.add(EngineSequence(i, it.prompt_tokens, it.output_tokens, it.prefix_blocks))
        now, first, done = 0.0, {}, {}
        while not engine.is_idle:
            duration, events = engine.step(horizon_s)
            now += duration
            first.update((s.request_id, now) for s in events.first_token)
            done.update((s.request_id, now) for s in events.finished)
        return first, done, engine.prefix_hit_tokens

    first_a, done_a, hits_a = run(0.0)
    first_b, done_b, hits_b = run(1e9)
    assert hits_a == hits_b > 0
    assert first_a.keys() == first_b.keys() == done_a.keys() == done_b.keys()
    for key in done_a:
        assert first_b[key] == pytest.approx(first_a[key], rel=1e-9)
        assert done_b[key] == pytest.approx(done_a[key], rel=1e-9)


def test_prefix_cache_counts_references_and_evicts_chain_ends_first():
    cache = PrefixCache(block_tokens=10)
    cache.pin((1, 2, 3))
    cache.pin((1, 2))  # a second sequence shares the head
    cache.unpin((1, 2, 3))
    assert list(cache.evictable) == [3] and cache.pinned == {1: 1, 2: 1}
    cache.unpin((1, 2))
    assert list(cache.evictable) == [3, 2, 1]  # released tail first: the head is evicted last
    cache.evict(free_tokens=29)  # room for two blocks
    assert list(cache.evictable) == [2, 1] and cache.match((1, 2, 3)) == 2 and len(cache) == 2
    cache.pin((1,))
    cache.evict(free_tokens=0)
    assert cache.match((1, 2)) == 1 and len(cache) == 1  # the pinned block outlives a full KV
