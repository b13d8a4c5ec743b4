"""The application builder: `serve run config.yaml` calls `build_app(args)` with the `args:` mapping.

This is the only place application arguments are read; components get typed sub-configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from ray.serve import Application
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.deployment import Deployment

from deployments.actors import ActorNames
from deployments.autoscaling import serve_autoscaling_config
from deployments.replica import LLMReplica
from deployments.replica_config import ReplicaConfig, perf_model_for
from driftsched.core.errors import ConfigError, UnknownPolicyError
from driftsched.sim.simulator import perf_prefill_rate
from policies import make_policy, policy_class
from serve_app.config import parse_app_config
from serve_app.ingress import Ingress

_SLOT_MARGIN = 4  # replicas accept a few more than their slots: the scheduler is the real limit


class _Sizing(TypedDict, total=False):
    """LLMReplica's size: a fixed pool, or Serve autoscaling (one of the two keys)."""

    num_replicas: int
    autoscaling_config: AutoscalingConfig


def _deployment(cls: object) -> Deployment:
    """`cls` as the `Deployment` that ``@serve.deployment`` made of it (mypy does not apply class
    decorators, so it still sees the class)."""
    if not isinstance(cls, Deployment):
        raise TypeError(f"{cls!r} is not a Serve deployment")
    return cls


def check_policy(name: str, options: Mapping[str, object]) -> None:
    """Build the configured policy once here, so a bad name or option fails `serve run` at once."""
    head = "invalid DriftSched application args:\n  core.scheduler"
    try:
        policy_class(name)
    except UnknownPolicyError as exc:
        raise ConfigError(f"{head}.policy: {exc}") from None
    try:
        make_policy(name, **options)
    except ValueError as exc:  # an unknown option, a value of the wrong type or out of range
        raise ConfigError(f"{head}.policy_options (policy {name!r}): {exc}") from None


def simulated_prefill_rate(replicas: ReplicaConfig) -> float | None:
    """Prefill tokens per real second of one simulated replica (None for vLLM: measured, from the
    configured prior): the placement's starting figure until it has measured its replicas'."""
    if replicas.engine != "sim":
        return None
    return perf_prefill_rate(perf_model_for(replicas)) / replicas.time_scale


def build_app(args: dict[str, object]) -> Application:
    """Validate the args and bind the ingress to the LLM replicas."""
    config = parse_app_config(args)
    check_policy(config.core.scheduler.policy, config.core.scheduler.policy_options)
    # the policy's options completed from this deployment (bounded's horizon = the queue timeout)
    config = config.model_copy(
        update={"core": config.scheduler_core(), "replicas": config.replicas.resolved()}
    )
    replicas, gateway = config.replicas, config.gateway
    actors = ActorNames(
        fingerprint=config.fingerprint(),
        core_config=config.core.model_dump(mode="json"),
        drift_snapshot_path=gateway.drift_snapshot_path,
        replica_timeout_s=gateway.replica_timeout_s,
        # vLLM stores a prefix shared by running requests once; the simulated engine charges each its
        # whole prompt, and its prefill rate is the performance model's, sped up by time_scale
        shared_kv=replicas.engine == "vllm",
        prefill_tokens_per_s=simulated_prefill_rate(replicas),
    )
    actor_options: dict[str, object] = {"num_cpus": replicas.num_cpus}
    if replicas.accelerator_type:
        actor_options["accelerator_type"] = replicas.accelerator_type
    if replicas.env:
        actor_options["runtime_env"] = {"env_vars": dict(replicas.env)}
    # A fixed pool, or Serve autoscaling with the queue-aware policy (deployments/autoscaling.py).
    sizing: _Sizing = {"num_replicas": replicas.num_replicas}
    if replicas.autoscaling.enabled:
        sizing = {"autoscaling_config": serve_autoscaling_config(replicas.autoscaling, actors.fingerprint)}
    llm = _deployment(LLMReplica).options(
        **sizing,
        max_ongoing_requests=replicas.max_num_seqs + replicas.engine_queue_slots + _SLOT_MARGIN,
        ray_actor_options=actor_options,
        request_router_config=RequestRouterConfig(
            # Ray annotates RequestRouterConfig's keyword arguments as dicts, not as its fields
            request_router_class="deployments.router:GrantedReplicaRouter"),  # type: ignore[arg-type]
    ).bind(replicas.model_dump(mode="json"), actors, config.core.scheduler.placement.block_tokens)
    return _deployment(Ingress).options(
        num_replicas=gateway.ingress_replicas,
        max_ongoing_requests=gateway.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": gateway.ingress_num_cpus},
    ).bind(config.model_dump(mode="json"), actors, llm)
