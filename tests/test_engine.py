"""The continuous-batching engine state: admission, chunked prefill, preemption, events, fused decode."""

from __future__ import annotations

import pytest

from driftsched.sim.engine import ContinuousBatchEngine, EngineSequence
from driftsched.sim.perf_model import QWEN3_1_7B_BF16, PerfModel
from driftsched.sim.workload import paper_workload


def run(engine, seqs, horizon_s=0.0):
    """Feed all sequences at t=0 and step to the end; returns per-request (first token, finish) times."""
    for s in seqs:
        engine.add(s)
    now, first, done = 0.0, {}, {}
    while not engine.is_idle:
        duration, events = engine.step(horizon_s)
        now += duration
        first.update((s.request_id, now) for s in events.first_token)
        done.update((s.request_id, now) for s in events.finished)
    return first, done


def test_single_request_timeline():
    perf = PerfModel()
    engine = ContinuousBatchEngine(perf)
    first, done = run(engine, [EngineSequence("a", 100, 5)])
    ttft = perf.step_time_s(100, 0, 0, 100 * 50)
    decode = sum(perf.step_time_s(0, 1, 100 + i) for i in range(4))
    assert first["a"] == pytest.approx(ttft)
    assert done["a"] == pytest.approx(ttft + decode)
    assert engine.kv_used == 0 and engine.held_tokens == 0


def test_chunked_prefill_splits_long_prompt():
    perf = PerfModel(max_num_batched_tokens=512)
    engine = ContinuousBatchEngine(perf)
    engine.add(EngineSequence("a", 1500, 3))
    iterations = 0
    while True:
        _, events = engine.step()
        iterations += 1
        if events.first_token:
            break
    assert iterations == 3  # 512 + 512 + 476


def test_max_num_seqs_limits_batch():
    engine = ContinuousBatchEngine(PerfModel(max_num_seqs=4))
    for i in range(10):
        engine.add(EngineSequence(i, 10, 50))
    engine.step()
    assert len(engine.running) == 4 and len(engine.waiting) == 6
    assert engine.free_seq_slots == 0


def test_engine_queue_slots_wait_beyond_the_running_batch():
    engine = ContinuousBatchEngine(PerfModel(max_num_seqs=4, engine_queue_slots=2))
    assert engine.max_slots == 6 and engine.free_seq_slots == 6
    for i in range(6):
        engine.add(EngineSequence(i, 10, 5 if i == 0 else 50))
    engine.step()
    assert len(engine.running) == 4 and len(engine.waiting) == 2 and engine.free_seq_slots == 0
    while not any(s.request_id == 0 for s in engine.step()[1].finished):
        pass
    engine.step()  # the slot freed by request 0 goes to the first queued one at the next step
    assert len(engine.running) == 4 and [s.request_id for s in engine.waiting] == [5]
    assert engine.free_seq_slots == 1


def test_preemption_when_kv_runs_out_and_everyone_finishes():
    perf = PerfModel()
    engine = ContinuousBatchEngine(perf)
    cap = engine.kv_capacity
    seqs = [EngineSequence(i, cap // 8, cap // 8) for i in range(8)]  # peak 2x the cache
    _, done = run(engine, seqs)
    assert set(done) == set(range(8))
    assert engine.num_preemptions > 0
    assert engine.kv_used == 0 and engine.held_tokens == 0


def test_add_rejects_request_larger_than_cache():
    engine = ContinuousBatchEngine(PerfModel())
    with pytest.raises(ValueError, match="KV capacity"):
        engine.add(EngineSequence("x", engine.kv_capacity, 1))


def test_free_capacity_and_abort():
    engine = ContinuousBatchEngine(PerfModel(max_num_seqs=8))
    seq = EngineSequence("a", 1000, 100)
    engine.add(seq)
    assert engine.free_seq_slots == 7
    assert engine.free_kv_tokens == engine.kv_capacity - 1000
    engine.step()
    assert engine.abort(seq) and not engine.abort(seq)
    assert engine.is_idle and engine.free_kv_tokens == engine.kv_capacity


@pytest.mark.parametrize("model_kwargs", [{}, {"model": QWEN3_1_7B_BF16}])
def test_fused_decode_equals_single_steps(model_kwargs):
    items = paper_workload(300, seed=3).items

    def seqs():
        return [EngineSequence(i, it.prompt_tokens, it.output_tokens) for i, it in enumerate(items)]

    first_a, done_a = run(ContinuousBatchEngine(PerfModel(**model_kwargs)), seqs())
    first_b, done_b = run(ContinuousBatchEngine(PerfModel(**model_kwargs)), seqs(), horizon_s=1e9)
    assert first_a.keys() == first_b.keys() == done_a.keys() == done_b.keys()
    for key in done_a:
        assert done_b[key] == pytest.approx(done_a[key], rel=1e-9)
        assert first_b[key] == pytest.approx(first_a[key], rel=1e-9)


def test_horizon_stops_fused_decode_at_first_step_past_it():
    perf = PerfModel()
    engine = ContinuousBatchEngine(perf)
    engine.add(EngineSequence("a", 10, 1000))
    engine.step()  # prefill
    duration, events = engine.step(horizon_s=0.5)
    step = perf.decode_step_s(1, 10)
    assert 0.5 <= duration < 0.5 + 1.1 * step
    assert events.num_iterations == events.num_tokens > 1
