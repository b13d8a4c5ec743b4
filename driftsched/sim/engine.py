"""Engine state of one simulated vLLM replica: running and waiting sequences, KV use, one step at a time.

Mirrors vLLM v1's scheduler loop closely enough for latency studies:

* each step has a token budget (``max_num_batched_tokens``); running sequences are served first (a decode
  takes one token, a partial prefill the rest of its chunk), then waiting ones while a sequence slot and
  KV room for their first chunk remain (chunked prefill);
* KV is allocated per step for the tokens computed; when it runs out, the newest running sequence is
  preempted recompute-style: its KV is freed and it goes back to the front of the waiting list, to be
  prefilled again over prompt + generated tokens; no waiting sequence is admitted in a step that preempted;
* the step that completes a sequence's pending tokens samples one token; the first one is the
  time-to-first-token event, the one that reaches the target length finishes the sequence.

The engine knows nothing of tenants or policies: the caller pulls work into it when ``free_seq_slots``
and ``free_kv_tokens`` allow. ``free_seq_slots`` counts the perf model's ``engine_queue_slots`` beyond
``max_num_seqs``: that many sequences may wait, in arrival order, for the next free running slot (the
engine-side queue a live replica keeps so a finishing sequence is replaced at the next step). The
target output length is the *true* one; only the simulator knows it. Sequences hold
KV counted in tokens (no block rounding).

Prefix caching (``block_tokens > 0``; 0 turns it off and leaves every step as it was), after vLLM's
automatic prefix caching. A sequence's ``blocks`` are its prompt's chained block hashes, ``block_tokens``
tokens each; only the whole blocks of the prompt count (a partial tail block is never shared).

* When a waiting sequence is admitted, its leading blocks found in the cache are not prefilled: its
  computed tokens start at ``matched x block_tokens``, capped at its tokens - 1 so that the step still
  computes one token and samples from it (vLLM caps a hit the same way). Those tokens are charged to
  ``kv_used`` at once, so the admission test is ``kv_used + cached + first chunk <= capacity``. A
  preempted sequence re-admitted matches again (often its own blocks, if they were not evicted).
* When a sequence's prefill reaches the end of its prompt, its whole prompt blocks enter the cache.
  (vLLM caches each block as soon as it is full, and caches generated blocks too; here a chunked
  prefill's blocks are reusable only once the prompt is done, and answers are never reused, so a next
  turn of a conversation hits only its previous prompt.)
* Blocks referenced by running sequences are pinned. A block nobody references stays cached, as
  evictable, in an LRU that lives in the free KV: it never holds more than ``(kv_capacity - kv_used) //
  block_tokens`` blocks, and every allocation that shrinks the free KV evicts its oldest blocks first;
  a chain is evicted from its end (`driftsched.sim.prefix_cache`).
* Simplification: a running sequence is charged its whole prompt in ``kv_used`` even when another
  running one holds the same blocks (vLLM stores them once). The model understates the KV room that
  sharing saves, not the prefill it saves.

Counters, as vLLM's ``prefix_cache_queries`` / ``prefix_cache_hits``: every admission adds the
sequence's tokens to ``prefix_query_tokens`` and its cached tokens to ``prefix_hit_tokens``; a
sequence's ``cached_tokens`` keeps what its first admission found.

``step(horizon_s)`` fuses consecutive pure-decode iterations until the next event or until the elapsed
time reaches ``horizon_s`` (closed-form sum), so a simulator can jump between events; with the default
horizon of 0 it runs exactly one iteration, as a real-time replica needs.

Lazy accounting (why a step costs O(events + log batch), not O(batch)). A running sequence is either
*decoding* (it has sampled and has exactly one uncached token, so each step it is served advances it by
one) or *prefilling*. Running sequences are kept in admission order, and the decoders always come first:
a sequence is admitted only once every running one was fully served, so at most the newest one is left
mid-prefill. Decoders do not store their counters; each step the engine bumps ``DecodeClock.ticks`` once
and a decoder's counters are its values when it started decoding plus the ticks since then
(``generated = base + ticks - since``). A heap keyed ``(finish tick, admission order)`` yields the decoders
that finish at the current tick in batch order, ``kv_used`` and ``held_tokens`` are running sums, and
decoders are served, and preempted from the tail, in bulk by count. Only prefilling sequences (usually
zero or one), preemption victims and finished sequences are touched one by one.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

from driftsched.sim.perf_model import PerfModel
from driftsched.sim.prefix_cache import PrefixCache
from driftsched.sim.sequence import DecodeClock, EngineSequence, StepEvents

__all__ = ["ContinuousBatchEngine", "DecodeClock", "EngineSequence", "StepEvents"]


class ContinuousBatchEngine:
    """Continuous batching with chunked prefill, recompute preemption and an optional prefix cache."""

    def __init__(self, perf: PerfModel, block_tokens: int = 0) -> None:
        self._cache = PrefixCache(block_tokens)
        self.perf = perf
        self.block_tokens = block_tokens
        self.kv_capacity = perf.kv_capacity_tokens
        self._running: dict[EngineSequence, None] = {}  # admission order; decoders first
        self._prefilling: list[EngineSequence] = []  # the running ones not decoding, in order
        self._finish_heap: list[tuple[int, int, EngineSequence]] = []  # (finish tick, order, seq)
        self._clock = DecodeClock()
        self._next_order = 0
        self.waiting: deque[EngineSequence] = deque()
        self.kv_used = 0
        self.held_tokens = 0  # prompt + generated over all sequences held, cached or not
        self.num_preemptions = 0
        # The cache's evictable blocks, bound here because the step's hot path tests it for emptiness.
        self._evictable = self._cache.evictable
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0

    # -- capacity the scheduler pulls against --------------------------------------------------
    @property
    def running(self) -> list[EngineSequence]:
        """The running batch in admission order (a copy)."""
        return list(self._running)

    @property
    def max_slots(self) -> int:
        """Sequences the engine takes in all: ``max_num_seqs`` running plus ``engine_queue_slots`` queued."""
        return self.perf.max_num_seqs + self.perf.engine_queue_slots

    @property
    def free_seq_slots(self) -> int:
        return max(0, self.max_slots - len(self._running) - len(self.waiting))

    @property
    def free_kv_tokens(self) -> int:
        """KV tokens left once every admitted sequence has its current tokens cached."""
        return max(0, self.kv_capacity - self.held_tokens)

    @property
    def is_idle(self) -> bool:
        return not self._running and not self.waiting

    @property
    def num_cached_blocks(self) -> int:
        """Blocks in the prefix cache: pinned by running sequences plus evictable ones."""
        return len(self._cache)

    def cached_prefix_blocks(self, blocks: Sequence[int]) -> int:
        """How many leading ``blocks`` the prefix cache holds now (0 without prefix caching)."""
        return self._cache.match(blocks)

    def add(self, seq: EngineSequence) -> None:
        """Queue a sequence; it starts at the next step that has room."""
        if seq.output_tokens < 1 or seq.prompt_tokens < 1:
            raise ValueError(f"request {seq.request_id!r}: prompt and output need at least 1 token")
        if seq.prompt_tokens + seq.output_tokens > self.kv_capacity:
            raise ValueError(
                f"request {seq.request_id!r}: {seq.prompt_tokens} prompt + {seq.output_tokens} output "
                f"tokens exceed the KV capacity of {self.kv_capacity}; cap max_tokens or the prompt"
            )
        self.waiting.append(seq)
        self.held_tokens += seq.num_tokens

    @property
    def running_slots(self) -> int:
        """Slots that run at once; the rest of `max_slots` hold granted sequences queued (0: none)."""
        return self.perf.max_num_seqs if self.perf.engine_queue_slots else 0

    def waiting_ids(self) -> tuple[str, ...]:
        """Ids of the waiting sequences that never started (taking one back costs nothing)."""
        return tuple(str(seq.request_id) for seq in self.waiting if not seq.started)

    def abort(self, seq: EngineSequence) -> bool:
        """Drop a sequence (client went away); returns whether it was in the engine."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self._running:
            del self._running[seq]
            if seq._clock is None:
                self._prefilling.remove(seq)
            else:
                _freeze(seq)
            self.kv_used -= seq._computed
            if seq._pinned:
                self._release(seq)
        else:
            return False
        self.held_tokens -= seq.num_tokens
        return True

    # -- stepping ------------------------------------------------------------------------------
    def step(self, horizon_s: float = 0.0) -> tuple[float, StepEvents]:
        """Run one iteration, or several fused decode iterations up to the next event or ``horizon_s``."""
        if self._running and horizon_s > 0.0 and not self._can_admit(len(self._running)):
            fused = self._fused_decode(horizon_s)
            if fused is not None:
                return fused
        return self._one_step()

    def _can_admit(self, num_decodes: int) -> bool:
        """Whether a step with ``num_decodes`` decodes could also start the head of the waiting list."""
        if not self.waiting or len(self._running) >= self.perf.max_num_seqs:
            return False
        budget = self.perf.max_num_batched_tokens - num_decodes
        need = min(self.waiting[0].num_tokens, budget)
        return budget > 0 and self.kv_used + num_decodes + need <= self.kv_capacity

    def _one_step(self) -> tuple[float, StepEvents]:
        events = StepEvents()
        running, prefilling, cap = self._running, self._prefilling, self.kv_capacity
        budget = self.perf.max_num_batched_tokens
        context = self.kv_used  # less what is preempted or left unserved, below
        # Decoders, in bulk: one token each while KV lasts. When it runs out, preempt from the tail
        # (prefilling ones first) until one more fits; if that takes the decoder due next, stop. The
        # budget always covers them: each decoder was served in the step before, at a token or more.
        todo, served = len(running) - len(prefilling), 0
        while todo:
            take = min(todo, cap - self.kv_used)
            served += take
            todo -= take
            self.kv_used += take
            if self._evictable:
                self._evict()
            while todo and self.kv_used + 1 > cap:
                todo -= not prefilling  # the tail is a decoder once no prefilling sequence is left
                _, freed = self._preempt_newest(events)
                context -= freed
        budget -= served
        # Prefilling sequences one by one, as vLLM does: clipped by the budget, preempting from the tail.
        scheduled: list[tuple[EngineSequence, int]] = []
        j = 0
        while j < len(prefilling) and budget > 0:
            seq = prefilling[j]
            need = min(seq.prompt_tokens + seq._generated - seq._computed, budget)
            while self.kv_used + need > cap:
                victim, freed = self._preempt_newest(events)
                context -= freed
                if victim is seq:
                    break
            else:
                scheduled.append((seq, need))
                self.kv_used += need
                if self._evictable:
                    self._evict()
                budget -= need
                j += 1
                continue
            break
        for seq in prefilling[j:]:
            context -= seq._computed
        limit, block_tokens = self.perf.max_num_seqs, self.block_tokens
        while not events.preempted and self.waiting and budget > 0 and len(running) < limit:
            seq = self.waiting[0]
            if block_tokens:
                matched, cached = self._lookup(seq)
                need = min(seq.prompt_tokens + seq._generated - cached, budget)
                if self.kv_used + cached + need > cap:
                    break
                self._admit_cached(seq, matched, cached)
                context += cached  # the step reads the cached prefix's KV, as it reads earlier chunks'
            else:
                need = min(seq.prompt_tokens + seq._generated - seq._computed, budget)
                if self.kv_used + need > cap:
                    break
            self.waiting.popleft()
            seq._admitted = True
            seq._order = self._next_order
            self._next_order += 1
            running[seq] = None
            prefilling.append(seq)
            scheduled.append((seq, need))
            self.kv_used += need
            if self._evictable:
                self._evict()
            budget -= need
        return self._apply(served, scheduled, context, events)

    def _preempt_newest(self, events: StepEvents) -> tuple[EngineSequence, int]:
        """Preempt the newest running sequence; returns it and the KV tokens freed."""
        seq, _ = self._running.popitem()
        if seq._clock is None:
            self._prefilling.pop()
        else:
            _freeze(seq)
        freed = seq._computed
        self.kv_used -= freed
        seq._computed = 0
        if seq._pinned:
            self._release(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        events.preempted.append(seq)
        return seq, freed

    def _apply(
        self, served: int, scheduled: list[tuple[EngineSequence, int]], context: int, events: StepEvents
    ) -> tuple[float, StepEvents]:
        prefill, decode, pairs = 0, served, 0.0
        for seq, n in scheduled:
            if n == 1 and seq._generated > 0 and seq._computed == seq.prompt_tokens + seq._generated - 1:
                decode += 1
            else:
                prefill += n
                pairs += n * (seq._computed + n / 2)
        duration = self.perf.step_time_s(prefill, decode, context, pairs)
        finished: list[EngineSequence] = []
        if served:
            self._clock.ticks += 1
            self.held_tokens += served
            events.num_tokens += served
            finished = self._pop_finished()
        still: list[EngineSequence] = []
        block_tokens = self.block_tokens
        for seq, n in scheduled:
            seq._computed += n
            if block_tokens and seq._computed >= seq.prompt_tokens:
                self._cache_prompt(seq)
            if seq._computed == seq.prompt_tokens + seq._generated:
                seq._generated += 1
                self.held_tokens += 1
                events.num_tokens += 1
                if seq._generated == 1:
                    events.first_token.append(seq)
                if seq._generated >= seq.output_tokens:
                    finished.append(seq)
                    self._drop(seq)
                    continue
            if seq._generated > 0 and seq._computed == seq.prompt_tokens + seq._generated - 1:
                self._start_decoding(seq)
            else:
                still.append(seq)
        if scheduled:  # they head the prefilling list: the unserved ones can only follow
            self._prefilling = still + self._prefilling[len(scheduled) :]
        events.finished = finished  # decoders precede the others in batch order
        events.num_iterations = 1 if served or scheduled else 0
        return duration, events

    def _fused_decode(self, horizon_s: float) -> tuple[float, StepEvents] | None:
        """Fuse pure-decode iterations; None when some sequence still prefills or KV is too tight."""
        if self._prefilling:
            return None
        n = len(self._running)
        clock, heap = self._clock, self._finish_heap
        while heap[0] is not heap[0][2]._entry:  # drop entries of aborted or re-timed sequences
            heapq.heappop(heap)
        to_finish = min(self.kv_capacity, heap[0][0] - clock.ticks)
        k_max = min(to_finish, (self.kv_capacity - self.kv_used) // n)
        if k_max < 2:
            return None
        # Smallest k >= 1 whose duration reaches the horizon (step times only grow), else k_max.
        k, duration = self.perf.decode_run_until(n, self.kv_used, horizon_s, k_max)
        events = StepEvents(num_iterations=k, num_tokens=n * k)
        clock.ticks += k
        self.kv_used += n * k
        if self._evictable:
            self._evict()
        self.held_tokens += n * k
        events.finished = self._pop_finished()
        return duration, events

    # -- lazy decoder bookkeeping --------------------------------------------------------------
    def _start_decoding(self, seq: EngineSequence) -> None:
        seq._clock = self._clock
        seq._since = self._clock.ticks
        self._push_finish(seq)

    def _push_finish(self, seq: EngineSequence) -> None:
        finish = seq._since + seq.output_tokens - seq._generated
        seq._entry = (finish, seq._order, seq)
        heapq.heappush(self._finish_heap, seq._entry)

    def _pop_finished(self) -> list[EngineSequence]:
        """Decoders that reached their length at the current tick, in batch order; dropped from the batch."""
        heap, now, done = self._finish_heap, self._clock.ticks, []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            seq = entry[2]
            if entry is seq._entry:
                _freeze(seq)
                self._drop(seq)
                done.append(seq)
        return done

    def _drop(self, seq: EngineSequence) -> None:
        """Release a finished sequence (its counters explicit already)."""
        del self._running[seq]
        self.kv_used -= seq._computed
        self.held_tokens -= seq.prompt_tokens + seq._generated
        if seq._pinned:
            self._release(seq)

    # -- prefix cache (module docstring) -------------------------------------------------------
    def _whole_blocks(self, seq: EngineSequence) -> int:
        return min(len(seq.blocks), seq.prompt_tokens // self.block_tokens)

    def _lookup(self, seq: EngineSequence) -> tuple[int, int]:
        """Leading whole prompt blocks of a waiting ``seq`` found cached, and the tokens they spare."""
        if not seq.blocks:
            return 0, 0
        matched = self._cache.match(seq.blocks[: self._whole_blocks(seq)])
        return matched, min(matched * self.block_tokens, seq.prompt_tokens + seq._generated - 1)

    def _admit_cached(self, seq: EngineSequence, matched: int, cached: int) -> None:
        """Pin the ``matched`` blocks for ``seq``, start it at ``cached`` computed tokens, count the query."""
        self._cache.pin(seq.blocks[:matched])
        seq._pinned = matched
        seq._computed = cached
        self.kv_used += cached
        self.prefix_query_tokens += seq.prompt_tokens + seq._generated
        self.prefix_hit_tokens += cached
        if not seq._admitted:  # the first admission (`step` marks it admitted just after)
            seq.cached_tokens = cached

    def _cache_prompt(self, seq: EngineSequence) -> None:
        """The prompt is computed: its whole blocks not yet pinned by ``seq`` enter the cache, pinned."""
        whole = self._whole_blocks(seq)
        if seq._pinned < whole:
            self._cache.pin(seq.blocks[seq._pinned : whole])
            seq._pinned = whole

    def _release(self, seq: EngineSequence) -> None:
        """Unpin ``seq``'s blocks (those nobody else holds become evictable) and fit the free KV."""
        self._cache.unpin(seq.blocks[: seq._pinned])
        seq._pinned = 0
        self._evict()

    def _evict(self) -> None:
        self._cache.evict(self.kv_capacity - self.kv_used)


def _freeze(seq: EngineSequence) -> None:
    """Make a decoder's counters explicit again (it finishes, is preempted or aborted)."""
    seq._generated = seq.generated
    seq._computed = seq.computed
    seq._clock = None
    seq._entry = None
