"""The lazily-accounted engine against a straightforward reference: identical steps, bit for bit.

``RefEngine`` below is the engine as first written: every step walks every running sequence and updates
its counters. Seeded random workloads (small batches, budgets and KV caches, so that chunking, budget
starvation and preemption all happen; random horizons, arrivals and aborts) run through both, and after
every step the durations, events and the whole engine state must be equal.

With ``block_tokens > 0`` the reference also keeps the prefix cache the plain way (a reference count per
pinned block, the evictable blocks in a list, oldest first, trimmed after every allocation), and the
prompts share prefixes (a few families of shared heads, and prompts that extend an earlier one, as a
conversation's next turn does), so that hits, pinning and eviction under KV pressure all happen.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import pytest

from driftsched.sim.engine import ContinuousBatchEngine, EngineSequence
from driftsched.sim.perf_model import QWEN3_1_7B_BF16, PerfModel


@dataclass(eq=False)
class RefSeq:
    request_id: Hashable
    prompt_tokens: int
    output_tokens: int
    blocks: tuple[int, ...] = ()
    generated: int = 0
    computed: int = 0
    pins: int = 0  # leading blocks this sequence references in the cache
    cached_tokens: int = 0
    admitted: bool = False

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass
class RefEvents:
    num_iterations: int = 0
    num_tokens: int = 0
    first_token: list[RefSeq] = field(default_factory=list)
    finished: list[RefSeq] = field(default_factory=list)
    preempted: list[RefSeq] = field(default_factory=list)


class RefEngine:
    def __init__(self, perf: PerfModel, block_tokens: int = 0) -> None:
        self.perf, self.kv_capacity = perf, perf.kv_capacity_tokens
        self.running: list[RefSeq] = []
        self.waiting: deque[RefSeq] = deque()
        self.kv_used = self.held_tokens = self.num_preemptions = 0
        self.block_tokens = block_tokens
        self.refs: dict[int, int] = {}
        self.lru: list[int] = []  # unreferenced cached blocks, oldest first
        self.queries = self.hits = self.evictions = 0

    # -- the prefix cache, the plain way
    def whole(self, seq: RefSeq) -> tuple[int, ...]:
        return seq.blocks[: seq.prompt_tokens // self.block_tokens]

    def evict(self) -> None:
        while self.lru and len(self.lru) * self.block_tokens > self.kv_capacity - self.kv_used:
            self.lru.pop(0)
            self.evictions += 1

    def pin(self, seq: RefSeq, upto: int) -> None:
        for h in seq.blocks[seq.pins : upto]:
            if h in self.lru:
                self.lru.remove(h)
            self.refs[h] = self.refs.get(h, 0) + 1
        seq.pins = max(seq.pins, upto)

    def release(self, seq: RefSeq) -> None:
        for h in reversed(seq.blocks[: seq.pins]):
            self.refs[h] -= 1
            if self.refs[h] == 0:
                del self.refs[h]
                self.lru.append(h)
        seq.pins = 0
        self.evict()

    def allocate(self, tokens: int) -> None:
        self.kv_used += tokens
        if self.block_tokens:
            self.evict()

    def free(self, seq: RefSeq) -> None:
        self.kv_used -= seq.computed
        if self.block_tokens:
            self.release(seq)

    def add(self, seq: RefSeq) -> None:
        self.waiting.append(seq)
        self.held_tokens += seq.num_tokens

    def abort(self, seq: RefSeq) -> bool:
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.free(seq)
        else:
            return False
        self.held_tokens -= seq.num_tokens
        return True

    def step(self, horizon_s: float = 0.0) -> tuple[float, RefEvents]:
        if self.running and horizon_s > 0.0 and not self._can_admit(len(self.running)):
            fused = self._fused_decode(horizon_s)
            if fused is not None:
                return fused
        return self._one_step()

    def _can_admit(self, num_decodes: int) -> bool:
        if not self.waiting or len(self.running) >= self.perf.max_num_seqs:
            return False
        budget = self.perf.max_num_batched_tokens - num_decodes
        need = min(self.waiting[0].num_tokens, budget)
        return budget > 0 and self.kv_used + num_decodes + need <= self.kv_capacity

    def _one_step(self) -> tuple[float, RefEvents]:
        events, budget, running = RefEvents(), self.perf.max_num_batched_tokens, self.running
        scheduled: list[tuple[RefSeq, int]] = []
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            need = min(seq.num_tokens - seq.computed, budget)
            while self.kv_used + need > self.kv_capacity:
                victim = running.pop()
                self.free(victim)
                victim.computed = 0
                self.waiting.appendleft(victim)
                self.num_preemptions += 1
                events.preempted.append(victim)
                if victim is seq:
                    break
            else:
                scheduled.append((seq, need))
                self.allocate(need)
                budget -= need
                i += 1
                continue
            break
        while not events.preempted and self.waiting and budget > 0 and len(running) < self.perf.max_num_seqs:
            seq = self.waiting[0]
            matched = cached = 0
            if self.block_tokens:
                for h in self.whole(seq):
                    if h not in self.refs and h not in self.lru:
                        break
                    matched += 1
                cached = min(matched * self.block_tokens, seq.num_tokens - 1)
            need = min(seq.num_tokens - cached, budget)
            if self.kv_used + cached + need > self.kv_capacity:
                break
            running.append(self.waiting.popleft())
            if self.block_tokens:
                self.pin(seq, matched)
                seq.computed = cached
                self.kv_used += cached
                self.queries += seq.num_tokens
                self.hits += cached
                if not seq.admitted:
                    seq.admitted, seq.cached_tokens = True, cached
            scheduled.append((seq, need))
            self.allocate(need)
            budget -= need
        prefill = decode = context = 0
        pairs = 0.0
        for seq, n in scheduled:
            context += seq.computed
            if n == 1 and seq.generated > 0 and seq.computed == seq.num_tokens - 1:
                decode += 1
            else:
                prefill += n
                pairs += n * (seq.computed + n / 2)
        duration = self.perf.step_time_s(prefill, decode, context, pairs)
        for seq, n in scheduled:
            seq.computed += n
            if self.block_tokens and seq.computed >= seq.prompt_tokens:
                self.pin(seq, len(self.whole(seq)))
            if seq.computed == seq.num_tokens:
                seq.generated += 1
                self.held_tokens += 1
                events.num_tokens += 1
                if seq.generated == 1:
                    events.first_token.append(seq)
                if seq.generated >= seq.output_tokens:
                    events.finished.append(seq)
                    self.free(seq)
                    self.held_tokens -= seq.num_tokens
        self.running = [s for s in self.running if s.generated < s.output_tokens]
        events.num_iterations = 1 if scheduled else 0
        return duration, events

    def _fused_decode(self, horizon_s: float) -> tuple[float, RefEvents] | None:
        n, to_finish = len(self.running), self.kv_capacity
        for seq in self.running:
            if seq.generated == 0 or seq.computed != seq.num_tokens - 1:
                return None
            to_finish = min(to_finish, seq.output_tokens - seq.generated)
        k_max = min(to_finish, (self.kv_capacity - self.kv_used) // n)
        if k_max < 2:
            return None
        lo, hi = 1, k_max
        while lo < hi:
            mid = (lo + hi) // 2
            if self.perf.decode_run_time_s(n, self.kv_used, mid) >= horizon_s:
                hi = mid
            else:
                lo = mid + 1
        events = RefEvents(num_iterations=lo, num_tokens=n * lo)
        for seq in self.running:
            seq.generated += lo
            seq.computed += lo
            if seq.generated >= seq.output_tokens:
                events.finished.append(seq)
        duration = self.perf.decode_run_time_s(n, self.kv_used, lo)
        self.allocate(n * lo)
        self.held_tokens += n * lo
        for seq in events.finished:
            self.free(seq)
            self.held_tokens -= seq.num_tokens
        self.running = [s for s in self.running if s.generated < s.output_tokens]
        return duration, events


def ids(seqs) -> list[Hashable]:
    return [s.request_id for s in seqs]


def state(engine, seqs) -> tuple:
    return (
        engine.kv_used,
        engine.held_tokens,
        engine.num_preemptions,
        ids(engine.running),
        ids(engine.waiting),
        [(s.generated, s.computed, s.num_tokens, s.cached_tokens) for s in seqs],
    )


def cache_state(engine) -> tuple:
    if isinstance(engine, RefEngine):
        return engine.refs, engine.lru, engine.queries, engine.hits
    cache = engine._cache
    return cache.pinned, list(cache.evictable), engine.prefix_query_tokens, engine.prefix_hit_tokens


class PrefixScript:
    """Random prompt blocks that share heads: a few families' shared heads, or an earlier prompt extended."""

    def __init__(self, rng: random.Random, block_tokens: int) -> None:
        self.rng, self.block_tokens = rng, block_tokens
        self.families = [tuple(range(1000 * f, 1000 * f + 50)) for f in range(1, 4)]
        self.earlier: list[tuple[int, ...]] = []
        self.next_id = 10**6

    def blocks(self, prompt: int) -> tuple[int, ...]:
        rng, whole = self.rng, prompt // self.block_tokens
        kind = rng.random()
        if kind < 0.3 and self.earlier:
            head = rng.choice(self.earlier)[:whole]
        elif kind < 0.8:
            head = rng.choice(self.families)[: rng.randint(0, whole)]
        else:
            head = ()
        tail = whole - len(head) + (rng.random() < 0.2)  # sometimes an id for a partial tail block too
        out = head + tuple(range(self.next_id, self.next_id + tail))
        self.next_id += tail
        self.earlier.append(out)
        return out


def replay(seed: int, perf_kwargs: dict, kv_capacity: int, steps: int, block_tokens: int = 0) -> RefEngine:
    """Drive both engines with one random script; returns the reference engine (for what it exercised)."""
    rng = random.Random(seed)
    perf = PerfModel(**perf_kwargs)
    perf.kv_capacity_tokens = kv_capacity  # a small cache, so that preemption is common
    new, ref = ContinuousBatchEngine(perf, block_tokens), RefEngine(perf, block_tokens)
    script = PrefixScript(random.Random(seed + 1000), block_tokens) if block_tokens else None
    new_seqs: list[EngineSequence] = []
    ref_seqs: list[RefSeq] = []
    for step in range(steps):
        for _ in range(rng.choice((0, 0, 0, 1, 3))):  # arrivals
            prompt = rng.choice((1, 2, rng.randint(1, 60), rng.randint(1, kv_capacity // 3)))
            output = rng.choice((1, 2, rng.randint(1, 40), rng.randint(1, kv_capacity // 3)))
            output = max(1, min(output, kv_capacity - prompt))
            blocks = script.blocks(prompt) if script else ()
            new_seqs.append(EngineSequence(len(new_seqs), prompt, output, blocks))
            ref_seqs.append(RefSeq(len(ref_seqs), prompt, output, blocks))
            new.add(new_seqs[-1])
            ref.add(ref_seqs[-1])
        if new_seqs and rng.random() < 0.05:  # a client goes away
            k = rng.randrange(len(new_seqs))
            assert new.abort(new_seqs[k]) == ref.abort(ref_seqs[k])
        horizon = rng.choice((0.0, 0.0, 1e-4, 0.02, 0.3, 1e9))
        got, want = new.step(horizon), ref.step(horizon)
        assert got[0] == want[0], f"step {step}: duration"
        for name in ("num_iterations", "num_tokens"):
            assert getattr(got[1], name) == getattr(want[1], name), f"step {step}: {name}"
        for name in ("first_token", "finished", "preempted"):
            assert ids(getattr(got[1], name)) == ids(getattr(want[1], name)), f"step {step}: {name}"
        assert state(new, new_seqs) == state(ref, ref_seqs), f"step {step}: state"
        assert cache_state(new) == cache_state(ref), f"step {step}: prefix cache"
        assert new.is_idle == (not ref.running and not ref.waiting)
    return ref


CONFIGS = [
    ({"max_num_seqs": 8, "max_num_batched_tokens": 64}, 400),
    ({"max_num_seqs": 16, "max_num_batched_tokens": 5}, 300),  # budget below the batch size
    ({"max_num_seqs": 64, "max_num_batched_tokens": 256, "model": QWEN3_1_7B_BF16}, 3000),
    ({"max_num_seqs": 256, "max_num_batched_tokens": 2048}, 20000),
]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("perf_kwargs", "kv_capacity"), CONFIGS)
def test_lazy_engine_matches_reference(seed, perf_kwargs, kv_capacity):
    replay(seed, perf_kwargs, kv_capacity, steps=600)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_scale", [1, 4, 16])
@pytest.mark.parametrize(("perf_kwargs", "kv_capacity"), CONFIGS)
def test_lazy_engine_with_prefix_cache_matches_reference(seed, block_scale, perf_kwargs, kv_capacity):
    # Blocks grow with the cache, so that prompts span a few to a few dozen blocks in every config.
    block_tokens = block_scale * max(1, kv_capacity // 1000)
    replay(seed, perf_kwargs, kv_capacity, steps=600, block_tokens=block_tokens)


def test_replay_exercises_preemption():
    refs = [replay(s, {"max_num_seqs": 8, "max_num_batched_tokens": 64}, 400, 600) for s in range(3)]
    assert sum(r.num_preemptions for r in refs) > 10


def test_prefix_replay_exercises_hits_and_eviction():
    """The cached replays are not vacuous: hits, preemptions and evictions all happen in them."""
    hits = preemptions = evictions = 0
    for seed in range(3):
        ref = replay(seed, {"max_num_seqs": 8, "max_num_batched_tokens": 64}, 400, 600, block_tokens=4)
        hits += ref.hits
        preemptions += ref.num_preemptions
        evictions += ref.evictions
    assert hits > 1000 and preemptions > 10 and evictions > 100


def bisect_decode_run(perf: PerfModel, n: int, ctx: int, horizon: float, k_max: int) -> tuple[int, float]:
    lo, hi = 1, k_max
    while lo < hi:
        mid = (lo + hi) // 2
        if perf.decode_run_time_s(n, ctx, mid) >= horizon:
            hi = mid
        else:
            lo = mid + 1
    return lo, perf.decode_run_time_s(n, ctx, lo)


@pytest.mark.parametrize("model_kwargs", [{}, {"model": QWEN3_1_7B_BF16}])
def test_decode_run_until_matches_bisection(model_kwargs):
    perf, rng = PerfModel(**model_kwargs), random.Random(7)
    for _ in range(20000):
        n = rng.choice((1, 2, rng.randint(1, 256)))
        ctx = rng.choice((n, rng.randint(n, 50 * n), rng.randint(n, perf.kv_capacity_tokens)))
        k_max = rng.choice((2, rng.randint(2, 40), rng.randint(2, 5000)))
        horizon = rng.choice((1e-9, rng.uniform(0, 0.05), rng.uniform(0, 2.0), 3600.0))
        if rng.random() < 0.2:  # exactly on a step boundary
            horizon = perf.decode_run_time_s(n, ctx, rng.randint(1, k_max))
        assert perf.decode_run_until(n, ctx, horizon, k_max) == bisect_decode_run(
            perf, n, ctx, horizon, k_max
        )
