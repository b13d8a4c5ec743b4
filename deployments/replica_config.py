"""Typed configuration of the LLM replicas and the engine factory that reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.engine import Engine
from driftsched.core.autoscale import AutoscaleConfig
from driftsched.core.config import CATEGORIES, DEFAULT_PRIORS
from driftsched.sim import perf_model

# The simulated "true" output lengths deliberately differ from the estimator's priors for some
# categories, so a fresh deployment shows drift that the correction then learns.
DEFAULT_OUTPUT_MEANS: dict[str, float] = {**DEFAULT_PRIORS, "chat": 320.0, "code": 520.0, "qa": 48.0}


PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ReplicaConfig(BaseModel):
    """LLM replicas: how many, which engine, the vLLM engine arguments and the simulated engine's knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)

    engine: Literal["sim", "vllm"] = "sim"
    """Engine backend: "sim" (simulated L4, runs anywhere) or "vllm" (vLLM's async engine)."""
    num_replicas: int = Field(default=2, ge=1, le=64)
    """Replicas, one per GPU (a fixed pool; with `autoscaling.enabled` its bounds apply instead)."""
    autoscaling: AutoscaleConfig = Field(default_factory=AutoscaleConfig)
    """Queue-aware autoscaling between autoscaling.min_replicas and max_replicas (off by default)."""
    model: str = Field(default="llama-3.1-8b-fp8", min_length=1)
    """Model served. Simulated engine: one of the performance model's shapes. vLLM: a Hugging Face id
    or a directory; a value starting with "." is a path relative to the project root."""
    served_model_name: str = Field(default="driftsched-sim", min_length=1)
    """Name reported by /v1/models and accepted in the `model` field."""
    max_num_seqs: int = Field(default=64, ge=1, le=1024)
    """Engine slots: sequences running at once on one replica (vLLM's max_num_seqs). The default is
    config.l4.yaml's: one L4 serving Llama-3.1-8B FP8, the replica the simulator models by default."""
    engine_queue_slots: int = Field(default=1, ge=0, le=1024)
    """Requests granted ahead to a replica beyond `max_num_seqs`, queued inside its engine: when a
    sequence finishes, the engine starts the next one at its next step instead of leaving the slot idle
    for a scheduler round trip (release, grant, dispatch). The order stays the policy's: a grant ahead
    that has not started is revoked for a better-ranked request that fits nowhere else, and goes back to
    its place in the queue (`driftsched.core.dispatch`). 0 hands over one slot at a time."""
    max_num_batched_tokens: int = Field(default=1024, ge=16)
    """Token budget of one engine step (chunked prefill). The default is config.l4.yaml's, the
    balanced budget of an L4 serving Llama-3.1-8B FP8 (`PerfModel.balanced_token_budget`): a larger
    chunk stalls every running stream on its matmuls (4,096 makes a step ~0.6 s, six times a 100 ms
    TPOT objective), a smaller one spends more steps on each prompt. Another model or GPU has its own."""
    time_scale: float = Field(default=1.0, gt=0, le=100)
    """Real seconds per modelled second: 1.0 is an L4 in real time, 0.02 is 50x faster."""
    stream_interval_s: float = Field(default=0.01, gt=0, le=1)
    """Simulated engine: real seconds between token deliveries (decode steps in between are fused).
    Larger values send fewer, bigger chunks: less CPU on a small machine, coarser TTFT."""
    output_means: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_OUTPUT_MEANS))
    """Mean true output tokens per category for the simulated engine."""
    output_sigma: float = Field(default=0.6, ge=0, le=3)
    """Log-normal sigma of simulated output lengths."""
    seed: int = 0
    """Seed of the simulated output-length RNG."""
    heartbeat_s: float = Field(default=0.5, gt=0, le=10)
    """How often a replica reports its capacity to the scheduler."""
    num_cpus: float = Field(default=0.1, ge=0)
    """CPUs reserved per replica actor (a simulated replica needs little CPU; vLLM wants a few)."""
    accelerator_type: str | None = None
    """Ray accelerator type to pin replicas to (e.g. "L4"); none for the simulated engine. A
    `deployments:` override of LLMReplica's ray_actor_options in the Serve config replaces this."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """vLLM only: extra `AsyncEngineArgs` (dtype, gpu_memory_utilization, max_model_len, ...).
    model, served_model_name, max_num_seqs and max_num_batched_tokens come from the fields above, and
    enable_prefix_caching from `prefix_caching`."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables of the replica processes (Ray runtime_env), e.g. vLLM's CPU settings."""
    kv_high_watermark: float = Field(default=0.95, gt=0, le=1)
    """vLLM only: above this KV-cache use a replica takes no new requests until it drains."""
    prefix_caching: bool = True
    """Engines keep the KV of prompt prefixes they computed and reuse it for a later prompt that starts
    the same way, prefilling only the rest: vLLM's automatic prefix caching (its engine argument
    enable_prefix_caching), modelled by the simulated engine in blocks of
    core.scheduler.placement.block_tokens. Cache-aware placement sends a request where its prefix is
    cached; off, every prompt is prefilled in full wherever it goes."""

    @model_validator(mode="after")
    def _check(self) -> ReplicaConfig:
        if self.engine == "sim" and self.model not in perf_model.MODEL_SHAPES:
            raise ValueError(f"unknown model {self.model!r} for the simulated engine; choose one of "
                             f"{sorted(perf_model.MODEL_SHAPES)}")
        if self.engine == "sim" and self.engine_args:
            raise ValueError("engine_args apply to engine: vllm only; remove them or set engine: vllm")
        clash = sorted({"model", "served_model_name", "max_num_seqs", "max_num_batched_tokens"}
                       & set(self.engine_args))
        if clash:
            raise ValueError(f"engine_args must not set {clash}; use the replicas fields of those names")
        caching = self.engine_args.get("enable_prefix_caching", self.prefix_caching)
        if caching != self.prefix_caching:
            raise ValueError(f"engine_args.enable_prefix_caching ({caching}) contradicts prefix_caching "
                             f"({self.prefix_caching}); remove it from engine_args and set prefix_caching")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}): one step must hold a token of every running sequence; raise "
                "max_num_batched_tokens or lower max_num_seqs"
            )
        return self

    @field_validator("output_means")
    @classmethod
    def _means(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(CATEGORIES))
        bad = {k: v for k, v in value.items() if not v > 0}
        if unknown or bad:
            raise ValueError(
                f"need a mean > 0 tokens per category among {', '.join(CATEGORIES)}; got unknown "
                f"categories {unknown}, means not > 0 {bad}"
            )
        return value

    @property
    def most_replicas(self) -> int:
        """The largest the pool may grow: autoscaling.max_replicas when autoscaling, else num_replicas."""
        return self.autoscaling.max_replicas if self.autoscaling.enabled else self.num_replicas

    def resolved(self) -> ReplicaConfig:
        """This config with a relative model path ("./..." or "../...") made absolute (project root)."""
        if self.engine == "vllm" and self.model.startswith("."):
            return self.model_copy(update={"model": str((PROJECT_ROOT / self.model).resolve())})
        return self


def perf_model_for(config: ReplicaConfig) -> perf_model.PerfModel:
    """The performance model a simulated replica runs (also what the simulator needs to match it)."""
    return perf_model.PerfModel(
        perf_model.MODEL_SHAPES[config.model],
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        engine_queue_slots=config.engine_queue_slots,
    )


def build_engine(config: ReplicaConfig, block_tokens: int = 0) -> Engine:
    """The engine a replica runs, from its configuration (vLLM is imported only when it starts).

    `block_tokens` is the placement's prefix block (core.scheduler.placement.block_tokens): the simulated
    engine caches prefixes in blocks of that size, so its cache and the scheduler's picture of it share
    one block; vLLM keeps its own KV blocks."""
    if config.engine == "vllm":
        from deployments.vllm_engine import VllmEngine

        return VllmEngine(config.model, config.served_model_name, config.max_num_seqs,
                          config.max_num_batched_tokens, dict(config.engine_args),
                          config.kv_high_watermark, config.engine_queue_slots, config.prefix_caching)

    from deployments.sim_engine import SimulatedEngine

    perf = perf_model_for(config)
    return SimulatedEngine(
        perf, time_scale=config.time_scale, output_means=dict(config.output_means),
        output_sigma=config.output_sigma, seed=config.seed, tick_s=config.stream_interval_s,
        block_tokens=block_tokens if config.prefix_caching else 0,
    )
