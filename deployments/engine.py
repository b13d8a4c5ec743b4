"""The engine interface an LLM replica drives, and the values that cross it.

An engine turns one granted request into a stream of token deltas. Two implementations: the simulated
L4 engine (`deployments.sim_engine`) and vLLM's async engine (`deployments.vllm_engine`). Both satisfy
`Engine`; the replica deployment never knows which one it holds.

Prompt token counting differs by engine (see `serve_app.prompts`): for the simulated engine the ingress
uses `approx_token_count`, a documented approximation (about four characters per token, and never fewer
tokens than whitespace-separated words); for vLLM it counts with the model's own tokenizer and sends the
token ids, so the engine runs exactly the prompt the scheduler estimated.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from driftsched.core.placement import Capacity

__all__ = [
    "Capacity",
    "Engine",
    "EngineErrorCode",
    "EngineFailure",
    "EngineTiming",
    "FinishReason",
    "GenerationRequest",
    "PrefixCacheCounters",
    "TokenDelta",
    "Usage",
    "approx_token_count",
]

CHARS_PER_TOKEN = 4.0


def approx_token_count(text: str) -> int:
    """Tokens in `text` for the simulated engine: ceil(chars / 4), but never fewer than the words.

    English BPE vocabularies average roughly four characters per token; counting words as a floor keeps
    short, space-heavy prompts from being undercounted. Empty text is 0 tokens.
    """
    if not text:
        return 0
    return max(len(text.split()), math.ceil(len(text) / CHARS_PER_TOKEN))


@dataclass(slots=True)
class GenerationRequest:
    """What a replica receives for one granted request (the prompt travels here, never via the queue)."""

    request_id: str
    prompt: str
    prompt_tokens: int
    max_tokens: int
    category: str
    temperature: float = 1.0
    stop: list[str] = field(default_factory=list)
    target_tokens: int | None = None
    """Benchmark-only output length (the engine generates exactly this many); None unless benchmark mode."""
    top_p: float = 1.0
    seed: int | None = None
    prompt_token_ids: list[int] | None = None
    """The prompt as the model's tokenizer encodes it (vLLM engine); None for the simulated engine."""
    grant: int = 0
    """The serial of the scheduler's grant this run holds: an order to stop a run names it (0: any)."""


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts of one finished request, as OpenAI reports them."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    """Prompt tokens whose KV the engine found in its prefix cache instead of computing them (OpenAI's
    `prompt_tokens_details.cached_tokens`, vLLM's `num_cached_tokens`); None where it does not say."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True, frozen=True)
class PrefixCacheCounters:
    """An engine's prefix-cache counters since it started, in tokens, as vLLM keeps them
    (`prefix_cache_queries` / `prefix_cache_hits`): prompt tokens looked up when a sequence is
    scheduled from waiting, and those found cached. A preempted sequence scheduled again counts again."""

    query_tokens: int = 0
    hit_tokens: int = 0


@dataclass(slots=True, frozen=True)
class EngineTiming:
    """What the engine measured for one request: time queued inside it, first-token latency."""

    queued_s: float
    first_token_s: float
    preemptions: int = 0


class FinishReason(enum.StrEnum):
    """How an engine's stream of one request ended (the last delta's `finish_reason`)."""

    STOP = "stop"  # a stop condition: end of sequence, a stop string
    LENGTH = "length"  # max_tokens reached
    ERROR = "error"  # the engine could not serve it: the delta's `error` says why
    PREEMPTED = "preempted"  # taken off this engine by the scheduler, to resume elsewhere


class EngineErrorCode(enum.StrEnum):
    """Why an engine could not serve a request (the ingress maps each to an HTTP answer)."""

    INVALID_REQUEST = "invalid_request"  # the input cannot run, e.g. longer than the context
    ENGINE_DEAD = "engine_dead"  # the engine stopped; another replica may serve a retry
    ENGINE_ABORTED = "engine_aborted"  # the engine ended the request for its own reasons
    ENGINE_ERROR = "engine_error"  # anything else


@dataclass(slots=True, frozen=True)
class EngineFailure:
    """Why an engine could not serve a request."""

    code: EngineErrorCode
    message: str


@dataclass(slots=True, frozen=True)
class TokenDelta:
    """New text of one request.

    The last delta carries `finish_reason`: STOP or LENGTH with `usage` (and `timing` where the
    engine measures it), ERROR with `error` set and no usage, or PREEMPTED when the scheduler took
    the request off this engine to resume it elsewhere (no usage; the gateway resumes it). `token_ids`
    are the delta's token ids where the engine has them (vLLM), so a resumed run can continue exactly.
    """

    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timing: EngineTiming | None = None
    error: EngineFailure | None = None
    token_ids: tuple[int, ...] | None = None


@runtime_checkable
class Engine(Protocol):
    """An inference engine as the replica deployment uses it."""

    async def start(self) -> None:
        """Start background work (model load, step loop)."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenDelta, None]:
        """Token deltas of one request; the final delta has a finish reason. Closing the generator
        early (the caller went away) stops the request inside the engine."""

    async def preempt(self, request_id: str) -> bool:
        """Stop a running request so its stream ends with a "preempted" delta; False if unknown."""

    def capacity(self) -> Capacity:
        """Current capacity, reported to the scheduler."""

    def prefix_cache(self) -> PrefixCacheCounters:
        """The prefix-cache counters so far, reported to the scheduler with the capacity (for metrics)."""

    async def stop(self) -> None:
        """Release resources; pending generations end."""
