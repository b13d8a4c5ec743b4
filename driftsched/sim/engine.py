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
and ``free_kv_tokens`` allow. The target output length is the *true* one; only the simulator knows it.
Sequences hold KV counted in tokens (no block rounding, no prefix caching).

``step(horizon_s)`` fuses consecutive pure-decode iterations until the next event or until the elapsed
time reaches ``horizon_s`` (closed-form sum, O(batch) per call), so a simulator can jump between events;
with the default horizon of 0 it runs exactly one iteration, as a real-time replica needs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from driftsched.sim.perf_model import PerfModel


@dataclass(slots=True, eq=False)
class EngineSequence:
    """One request inside the engine: prompt, true output length, and progress so far."""

    request_id: Hashable
    prompt_tokens: int
    output_tokens: int
    generated: int = 0
    computed: int = 0  # tokens whose KV is cached

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass(slots=True)
class StepEvents:
    """What one ``step()`` call did: iterations run, tokens sampled, sequences that changed state."""

    num_iterations: int = 0
    num_tokens: int = 0
    first_token: list[EngineSequence] = field(default_factory=list)
    finished: list[EngineSequence] = field(default_factory=list)
    preempted: list[EngineSequence] = field(default_factory=list)


class ContinuousBatchEngine:
    """Continuous batching with chunked prefill and recompute preemption, timed by a ``PerfModel``."""

    def __init__(self, perf: PerfModel) -> None:
        self.perf = perf
        self.kv_capacity = perf.kv_capacity_tokens
        self.running: list[EngineSequence] = []
        self.waiting: deque[EngineSequence] = deque()
        self.kv_used = 0
        self.held_tokens = 0  # prompt + generated over all sequences held, cached or not
        self.num_preemptions = 0

    # -- capacity the scheduler pulls against --------------------------------------------------
    @property
    def free_seq_slots(self) -> int:
        return max(0, self.perf.max_num_seqs - len(self.running) - len(self.waiting))

    @property
    def free_kv_tokens(self) -> int:
        """KV tokens left once every admitted sequence has its current tokens cached."""
        return max(0, self.kv_capacity - self.held_tokens)

    @property
    def is_idle(self) -> bool:
        return not self.running and not self.waiting

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

    def abort(self, seq: EngineSequence) -> bool:
        """Drop a sequence (client went away); returns whether it was in the engine."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.kv_used -= seq.computed
        else:
            return False
        self.held_tokens -= seq.num_tokens
        return True

    # -- stepping ------------------------------------------------------------------------------
    def step(self, horizon_s: float = 0.0) -> tuple[float, StepEvents]:
        """Run one iteration, or several fused decode iterations up to the next event or ``horizon_s``."""
        if self.running and horizon_s > 0.0 and not self._can_admit(len(self.running)):
            fused = self._fused_decode(horizon_s)
            if fused is not None:
                return fused
        return self._one_step()

    def _can_admit(self, num_decodes: int) -> bool:
        """Whether a step with ``num_decodes`` decodes could also start the head of the waiting list."""
        if not self.waiting or len(self.running) >= self.perf.max_num_seqs:
            return False
        budget = self.perf.max_num_batched_tokens - num_decodes
        need = min(self.waiting[0].num_tokens, budget)
        return budget > 0 and self.kv_used + num_decodes + need <= self.kv_capacity

    def _one_step(self) -> tuple[float, StepEvents]:
        events = StepEvents()
        budget = self.perf.max_num_batched_tokens
        scheduled: list[tuple[EngineSequence, int]] = []
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            need = seq.prompt_tokens + seq.generated - seq.computed
            if need > budget:
                need = budget
            while self.kv_used + need > self.kv_capacity:
                victim = running.pop()
                self._preempt(victim, events)
                if victim is seq:
                    break
            else:
                scheduled.append((seq, need))
                self.kv_used += need
                budget -= need
                i += 1
                continue
            break
        limit = self.perf.max_num_seqs
        while not events.preempted and self.waiting and budget > 0 and len(running) < limit:
            seq = self.waiting[0]
            need = min(seq.num_tokens - seq.computed, budget)
            if self.kv_used + need > self.kv_capacity:
                break
            running.append(self.waiting.popleft())
            scheduled.append((seq, need))
            self.kv_used += need
            budget -= need
        return self._apply(scheduled, events)

    def _preempt(self, seq: EngineSequence, events: StepEvents) -> None:
        self.kv_used -= seq.computed
        seq.computed = 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        events.preempted.append(seq)

    def _apply(
        self, scheduled: list[tuple[EngineSequence, int]], events: StepEvents
    ) -> tuple[float, StepEvents]:
        prefill = decode = context = 0
        pairs = 0.0
        for seq, n in scheduled:
            context += seq.computed
            if n == 1 and seq.generated > 0 and seq.computed == seq.prompt_tokens + seq.generated - 1:
                decode += 1
            else:
                prefill += n
                pairs += n * (seq.computed + n / 2)
        duration = self.perf.step_time_s(prefill, decode, context, pairs)
        done = False
        for seq, n in scheduled:
            seq.computed += n
            if seq.computed == seq.prompt_tokens + seq.generated:
                seq.generated += 1
                self.held_tokens += 1
                events.num_tokens += 1
                if seq.generated == 1:
                    events.first_token.append(seq)
                if seq.generated >= seq.output_tokens:
                    events.finished.append(seq)
                    self.kv_used -= seq.computed
                    self.held_tokens -= seq.num_tokens
                    done = True
        if done:
            self.running = [s for s in self.running if s.generated < s.output_tokens]
        events.num_iterations = 1 if scheduled else 0
        return duration, events

    def _fused_decode(self, horizon_s: float) -> tuple[float, StepEvents] | None:
        """Fuse pure-decode iterations; None when some sequence still prefills or KV is too tight."""
        n = len(self.running)
        to_finish = self.kv_capacity  # upper bound on any remaining output
        for seq in self.running:
            if seq.generated == 0 or seq.computed != seq.prompt_tokens + seq.generated - 1:
                return None
            left = seq.output_tokens - seq.generated
            if left < to_finish:
                to_finish = left
        k_max = min(to_finish, (self.kv_capacity - self.kv_used) // n)
        if k_max < 2:
            return None
        # Smallest k >= 1 whose duration reaches the horizon (step times only grow), else k_max.
        perf, ctx = self.perf, self.kv_used
        lo, hi = 1, k_max
        while lo < hi:
            mid = (lo + hi) // 2
            if perf.decode_run_time_s(n, ctx, mid) >= horizon_s:
                hi = mid
            else:
                lo = mid + 1
        k = lo
        events = StepEvents(num_iterations=k, num_tokens=n * k)
        for seq in self.running:
            seq.generated += k
            seq.computed += k
            if seq.generated >= seq.output_tokens:
                events.finished.append(seq)
        self.kv_used += n * k
        self.held_tokens += n * k
        if events.finished:
            self.kv_used -= sum(s.computed for s in events.finished)
            self.held_tokens -= sum(s.num_tokens for s in events.finished)
            self.running = [s for s in self.running if s.generated < s.output_tokens]
        return perf.decode_run_time_s(n, ctx, k), events
