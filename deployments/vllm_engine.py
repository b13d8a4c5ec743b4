"""The production engine: vLLM's async engine (`AsyncLLM`) behind the `Engine` protocol.

vLLM is imported only here, and only when `start` runs, so the rest of DriftSched imports without it.

* Prompts arrive as token ids counted by the ingress with the model's tokenizer, so the prompt length
  the scheduler saw is exactly what vLLM runs (and what `usage.prompt_tokens` reports).
* Streaming uses `RequestOutputKind.DELTA`; each delta is forwarded as it comes. The final delta carries
  vLLM's finish reason, `usage` from the engine's own counts, and `EngineTiming`: time queued inside
  vLLM (queued -> first scheduled, engine-core clock) and first-token latency (vLLM's frontend clock).
* Cancelling the consumer (client gone) aborts the request inside vLLM; the `finally` also aborts
  explicitly, so no request is left running whatever way the stream ends.
* Capacity comes from the engine's real state: a stat logger receives vLLM's `SchedulerStats` every
  step (running and waiting sequences, KV-cache use). The replica takes `max_num_seqs` plus
  `queue_slots` requests: the few beyond the running batch wait in vLLM's queue, so a finishing
  sequence is replaced at vLLM's next step rather than after a scheduler round trip. While more than
  `queue_slots` requests wait in vLLM (it ran short of KV), or the KV cache is above
  `kv_high_watermark`, the replica offers no free slots, so the backlog stays in the scheduler where
  the policy orders it instead of in vLLM's FCFS queue.
* Errors become `EngineFailure` values on the final delta: invalid input (e.g. prompt longer than the
  model's context), a dead engine, an aborted request, anything else (`EngineErrorCode`).
* Automatic prefix caching is on unless `prefix_caching` is False: the final delta's `usage` carries
  the request's `num_cached_tokens` (prompt tokens vLLM found cached), and the stat logger adds up
  vLLM's prefix-cache queries and hits (`prefix_cache`), the counters vLLM's own /metrics exports.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployments.engine import (
    Capacity,
    EngineErrorCode,
    EngineFailure,
    EngineTiming,
    FinishReason,
    GenerationRequest,
    PrefixCacheCounters,
    TokenDelta,
    Usage,
)

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase
    from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, RequestStateStats, SchedulerStats

logger = logging.getLogger(__name__)

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}  # vLLM's reasons the client sees
_QUEUE_EWMA = 0.2  # weight of the newest request in the running mean of vLLM queue time


@dataclass(slots=True)
class EngineState:
    """vLLM's scheduler state as of its last step (written by the stat logger)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    updated: float = 0.0
    prefix_queries: int = 0
    """Prompt tokens looked up in the prefix cache, summed over every step since start."""
    prefix_hits: int = 0
    """Of those, tokens found cached."""


def make_stat_logger(state: EngineState) -> type[StatLoggerBase]:
    """A vLLM stat-logger factory that copies each step's scheduler stats into `state`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _StateLogger(StatLoggerBase):
        def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: IterationStats | None,
                   mm_cache_stats: MultiModalCacheStats | None = None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                state.running = scheduler_stats.num_running_reqs
                state.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                state.kv_usage = scheduler_stats.kv_cache_usage
                state.updated = time.monotonic()
                cache = scheduler_stats.prefix_cache_stats  # this step's lookups, not running totals
                state.prefix_queries += cache.queries
                state.prefix_hits += cache.hits

        def log_engine_initialized(self) -> None:
            pass

    return _StateLogger


class VllmEngine:
    """Implements `deployments.engine.Engine` on vLLM's `AsyncLLM` (see module docstring)."""

    def __init__(self, model: str, served_model_name: str, max_num_seqs: int, max_num_batched_tokens: int,
                 engine_args: dict[str, Any], kv_high_watermark: float = 0.95,
                 queue_slots: int = 0, prefix_caching: bool = True) -> None:
        self._args = {
            "model": model, "served_model_name": served_model_name, "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens, "disable_log_stats": True,
            "enable_log_requests": False, "enable_prefix_caching": prefix_caching, **engine_args,
        }
        self._max_num_seqs = max_num_seqs
        self._prefix_caching = prefix_caching
        self._queue_slots = queue_slots
        self._kv_high_watermark = kv_high_watermark
        self._engine: AsyncLLM | None = None
        self._kv_tokens = 0
        self._state = EngineState()
        self._active: dict[str, int] = {}  # running request id -> tokens generated so far
        self._preempted: set[str] = set()
        self._queue_s = 0.0

    # -- Engine protocol -------------------------------------------------------------------------

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.monotonic()
        # custom stat loggers turn on per-request metrics without vLLM's default log/Prometheus loggers
        self._engine = engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._args),
                                                          stat_loggers=[make_stat_logger(self._state)])
        cache = engine.vllm_config.cache_config
        self._kv_tokens = int((cache.num_gpu_blocks or 0) * cache.block_size)
        logger.info("vLLM engine up in %.1fs: %s, %d KV tokens", time.monotonic() - started,
                    self._args["model"], self._kv_tokens)

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def capacity(self) -> Capacity:
        state, active = self._state, tuple(self._active)
        dead = self._engine is None or self._engine.errored
        slots = self._max_num_seqs + self._queue_slots
        pressured = bool(active) and (state.waiting > self._queue_slots
                                      or state.kv_usage >= self._kv_high_watermark)
        free = 0 if dead or pressured else max(0, slots - len(active))
        # vLLM sends no stats once it has nothing left to step, so after the last request ends (an
        # abort, say) its last figures would stand; with nothing active here, nothing runs there
        running, waiting = (state.running, state.waiting) if active else (0, 0)
        return Capacity(
            max_slots=slots, free_slots=free,
            free_kv_tokens=int(self._kv_tokens * (1.0 - state.kv_usage)), active=active,
            kv_capacity_tokens=self._kv_tokens, progress=tuple(self._active[rid] for rid in active),
            engine_running=running, engine_waiting=waiting, kv_usage=state.kv_usage,
            engine_queue_s=self._queue_s,
            running_slots=self._max_num_seqs if self._queue_slots else 0,
            waiting_ids=self._not_started(waiting) if self._queue_slots else (),
        )

    def _not_started(self, waiting: int) -> tuple[str, ...]:
        """The requests vLLM holds in its waiting queue, as far as this side can tell: of those with no
        token yet, the `waiting` that arrived last (vLLM starts them first come, first served). Stale
        statistics only make it name fewer, so a revocation never hits a request it believes waiting
        that vLLM already runs, except in the moment between vLLM starting it and the next statistics."""
        if waiting <= 0:
            return ()
        fresh = [rid for rid, tokens in self._active.items() if tokens == 0]
        return tuple(fresh[-waiting:])

    def prefix_cache(self) -> PrefixCacheCounters:
        return PrefixCacheCounters(self._state.prefix_queries, self._state.prefix_hits)

    async def preempt(self, request_id: str) -> bool:
        if self._engine is None or request_id not in self._active:
            return False
        self._preempted.add(request_id)
        await self._engine.abort(request_id)  # vLLM ends the stream with an "abort" output
        return True

    async def check_health(self) -> None:
        """Raise if the engine died (Serve then replaces the replica)."""
        if self._engine is None or self._engine.errored:
            raise RuntimeError("vLLM engine is not running")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenDelta, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        rid = request.request_id
        finished = False
        self._active[rid] = 0
        try:
            async for delta in self._stream(request):
                finished = delta.finish_reason is not None
                yield delta
        except (VLLMClientError, ValueError) as exc:
            finished = True
            yield _failure(EngineErrorCode.INVALID_REQUEST, str(exc))
        except EngineDeadError:
            finished = True
            logger.error("vLLM engine died while serving %s", rid)
            yield _failure(EngineErrorCode.ENGINE_DEAD, "the inference engine stopped; retry")
        except Exception as exc:  # any other engine fault is the replica's, not the client's
            finished = True
            logger.exception("vLLM failed on %s", rid)
            yield _failure(EngineErrorCode.ENGINE_ERROR, f"inference engine error ({type(exc).__name__})")
        finally:
            self._active.pop(rid, None)
            self._preempted.discard(rid)
            if not finished and self._engine is not None:
                with contextlib.suppress(Exception):
                    await self._engine.abort(rid)

    # -- internals -------------------------------------------------------------------------------

    def _sampling_params(self, request: GenerationRequest) -> SamplingParams:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # benchmark mode only: a target fixes the output length (vLLM's defaults: min_tokens 0, EOS heeded)
        target = request.target_tokens
        fixed = None if target is None else max(1, min(request.max_tokens, target))
        return SamplingParams(
            n=1, max_tokens=request.max_tokens if fixed is None else fixed, temperature=request.temperature,
            top_p=request.top_p, seed=request.seed, stop=list(request.stop) or None,
            output_kind=RequestOutputKind.DELTA, min_tokens=fixed or 0, ignore_eos=fixed is not None,
        )

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[TokenDelta, None]:
        from vllm.inputs import TokensPrompt

        if request.prompt_token_ids is None:
            raise ValueError("the vLLM engine needs prompt token ids (count prompts with the tokenizer)")
        engine = self._engine
        if engine is None:
            raise RuntimeError("vLLM engine is not running")
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_token_ids))
        generated = 0
        async for out in engine.generate(prompt, self._sampling_params(request), request.request_id):
            completion = out.outputs[0]
            ids = tuple(completion.token_ids)
            generated += len(ids)
            if request.request_id in self._active:
                self._active[request.request_id] = generated
            if not out.finished and request.request_id in self._preempted:
                # Ordered stopped before vLLM had it (its abort then found nothing): stop it now.
                await engine.abort(request.request_id)
                yield TokenDelta(completion.text, len(ids), FinishReason.PREEMPTED, token_ids=ids)
                return
            if not out.finished:
                if completion.text or ids:
                    yield TokenDelta(completion.text, len(ids), token_ids=ids)
                continue
            reason = completion.finish_reason
            if request.request_id in self._preempted:
                yield TokenDelta(completion.text, len(ids), FinishReason.PREEMPTED, token_ids=ids)
                return
            if reason is None or reason not in _FINISH:
                yield _failure(EngineErrorCode.ENGINE_ABORTED, f"the engine ended the request ({reason})")
                return
            metrics = out.metrics
            if metrics is not None and metrics.num_generation_tokens:
                generated = metrics.num_generation_tokens
            prompt_tokens = len(out.prompt_token_ids or request.prompt_token_ids)
            cached = out.num_cached_tokens if self._prefix_caching else None  # off: nothing was looked up
            usage = Usage(prompt_tokens, generated, cached)
            yield TokenDelta(completion.text, len(ids), _FINISH[reason], usage, timing=self._timing(metrics),
                             token_ids=ids)
            return

    def _timing(self, metrics: RequestStateStats | None) -> EngineTiming | None:
        if metrics is None or not metrics.scheduled_ts:
            return None
        queued = max(0.0, metrics.scheduled_ts - metrics.queued_ts)
        self._queue_s += _QUEUE_EWMA * (queued - self._queue_s)
        return EngineTiming(queued_s=queued, first_token_s=metrics.first_token_latency,
                            preemptions=metrics.num_preemptions)


def _failure(code: EngineErrorCode, message: str) -> TokenDelta:
    return TokenDelta("", 0, FinishReason.ERROR, error=EngineFailure(code, message))
