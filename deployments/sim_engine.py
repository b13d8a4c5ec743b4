"""A simulated NVIDIA L4 replica, paced in real time by the performance model.

The engine state (continuous batching, chunked prefill, KV accounting) is `driftsched.sim.engine`'s
`ContinuousBatchEngine`, timed by `driftsched.sim.perf_model.PerfModel` — the same model the
discrete-event simulator uses. A step loop runs one engine step (or several fused decode steps, up to
`tick_s` of real time), sleeps until the modelled time multiplied by `time_scale` has passed, then
hands each sequence's new tokens to its stream. `time_scale=1` is an L4 in real time; tests use ~0.02.
Pacing follows a deadline carried from step to step, so the loop's own overhead is absorbed instead
of accumulating: the replica keeps the model's pace as long as the CPU allows, and catches up after
a stall (a deadline more than a second behind is reset, so a long stall is not replayed at full speed).

Output length of a request (the simulator's hidden truth):

* benchmark mode: the request's `target_tokens`, capped by `max_tokens`;
* otherwise a draw from a log-normal distribution per category, mean `output_means[category]` and
  log-standard-deviation `output_sigma`, from an RNG seeded with `seed`, capped by `max_tokens`.

Generated text is a fixed cycle of placeholder words, one word per token.

Prefix caching (`block_tokens` > 0): the engine hashes each prompt's text in blocks of `block_tokens`
x 4 characters (`driftsched.core.prefix.text_block_hashes`, as the ingress does) and the modelled engine
keeps those blocks' KV as vLLM's automatic prefix caching does (`ContinuousBatchEngine`), so a prompt
that starts like one it served recently prefills only the rest. The final delta's usage says how many
prompt tokens were found cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import AsyncGenerator

from deployments.engine import (
    Capacity,
    FinishReason,
    GenerationRequest,
    PrefixCacheCounters,
    TokenDelta,
    Usage,
)
from driftsched.core.prefix import text_block_hashes
from driftsched.sim.engine import ContinuousBatchEngine, EngineSequence
from driftsched.sim.perf_model import PerfModel

logger = logging.getLogger(__name__)

_MAX_LAG_S = 1.0  # a replica further behind its modelled pace than this stops trying to catch up
_PREEMPTED = -2  # queue sentinel: the scheduler took the request off this engine
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


class SimulatedEngine:
    """Implements `deployments.engine.Engine` on the L4 performance model (see module docstring)."""

    def __init__(
        self,
        perf: PerfModel,
        *,
        time_scale: float,
        output_means: dict[str, float],
        output_sigma: float = 0.6,
        seed: int = 0,
        tick_s: float = 0.01,
        block_tokens: int = 0,
    ) -> None:
        """`block_tokens`: the prefix cache's block (module docstring); 0 turns prefix caching off."""
        self._engine = ContinuousBatchEngine(perf, block_tokens=block_tokens)
        self._block_tokens = block_tokens
        self._perf = perf
        self._time_scale = time_scale
        self._horizon_s = tick_s / time_scale if time_scale > 0 else 0.0
        self._means = output_means
        self._sigma = output_sigma
        self._rng = random.Random(seed)
        self._seqs: dict[str, EngineSequence] = {}
        self._queues: dict[str, asyncio.Queue[int]] = {}
        self._sent: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # -- Engine protocol -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._step_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    def capacity(self) -> Capacity:
        engine = self._engine
        return Capacity(
            max_slots=engine.max_slots,
            free_slots=engine.free_seq_slots,
            free_kv_tokens=engine.free_kv_tokens,
            active=tuple(self._seqs),
            progress=tuple(seq.generated for seq in self._seqs.values()),
            kv_capacity_tokens=engine.kv_capacity,
            engine_running=len(engine.running),
            engine_waiting=len(engine.waiting),
            kv_usage=1.0 - engine.free_kv_tokens / engine.kv_capacity if engine.kv_capacity else 0.0,
            running_slots=engine.running_slots,
            waiting_ids=engine.waiting_ids() if engine.running_slots else (),
        )

    def prefix_cache(self) -> PrefixCacheCounters:
        engine = self._engine
        return PrefixCacheCounters(engine.prefix_query_tokens, engine.prefix_hit_tokens)

    def _forget(self, request_id: str) -> None:
        """Drop a request from the engine (freeing its KV) and from the streams; a no-op if unknown."""
        seq = self._seqs.pop(request_id, None)
        if seq is not None:
            self._engine.abort(seq)
        self._queues.pop(request_id, None)
        self._sent.pop(request_id, None)

    async def preempt(self, request_id: str) -> bool:
        queue = self._queues.get(request_id)
        if queue is None:
            return False
        self._forget(request_id)
        queue.put_nowait(_PREEMPTED)
        return True

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenDelta, None]:
        rid = request.request_id
        target = self._output_length(request)
        blocks = text_block_hashes(request.prompt, self._block_tokens) if self._block_tokens else ()
        seq = EngineSequence(rid, max(1, request.prompt_tokens), target, blocks)
        queue: asyncio.Queue[int] = asyncio.Queue()
        self._engine.add(seq)  # raises ValueError for a request larger than the KV cache
        self._seqs[rid], self._queues[rid], self._sent[rid] = seq, queue, 0
        self._wake.set()
        done = 0
        try:
            while done < target:
                n = await queue.get()
                if n == _PREEMPTED:
                    yield TokenDelta("", 0, FinishReason.PREEMPTED)
                    return
                if n < 0:
                    raise RuntimeError("simulated engine stopped")
                text = "".join(" " + _WORDS[(done + i) % len(_WORDS)] for i in range(n))
                done += n
                if done >= target:
                    finish = FinishReason.LENGTH if target >= request.max_tokens else FinishReason.STOP
                    cached = seq.cached_tokens if self._block_tokens else None
                    usage = Usage(request.prompt_tokens, done, cached)
                    yield TokenDelta(text, n, finish, usage)
                else:
                    yield TokenDelta(text, n)
        finally:
            self._forget(rid)  # no-op once finished; frees KV when the caller went away

    # -- internals -------------------------------------------------------------------------------

    def _output_length(self, request: GenerationRequest) -> int:
        if request.target_tokens is not None:
            return max(1, min(request.max_tokens, request.target_tokens))
        mean = self._means.get(request.category, 256.0)
        mu = math.log(mean) - self._sigma**2 / 2  # so that E[length] == mean
        return max(1, min(request.max_tokens, round(self._rng.lognormvariate(mu, self._sigma))))

    async def _step_loop(self) -> None:
        engine, loop = self._engine, asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                if engine.is_idle:
                    self._wake.clear()
                    await self._wake.wait()
                    deadline = loop.time()
                    continue
                duration, _events = engine.step(self._horizon_s)
                now = loop.time()
                deadline = max(deadline, now - _MAX_LAG_S) + duration * self._time_scale
                if deadline > now:
                    await asyncio.sleep(deadline - now)
                self._deliver()
            except asyncio.CancelledError:
                for queue in self._queues.values():
                    queue.put_nowait(-1)
                raise
            except Exception:
                logger.exception("simulated engine step failed; continuing")
                await asyncio.sleep(0.01)

    def _deliver(self) -> None:
        for rid, seq in list(self._seqs.items()):
            new = seq.generated - self._sent[rid]
            if new > 0:
                self._sent[rid] = seq.generated
                self._queues[rid].put_nowait(new)
                if seq.generated >= seq.output_tokens:
                    del self._seqs[rid]  # finished: the engine already dropped it
