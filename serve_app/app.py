"""The application builder: `serve run config.yaml` calls `build_app(args)` with the `args:` mapping.

This is the only place application arguments are read; components get typed sub-configs.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from deployments.actors import ActorNames
from deployments.autoscaling import serve_autoscaling_config
from deployments.replica import LLMReplica
from driftsched.core.errors import ConfigError, UnknownPolicyError
from policies import make_policy, policy_class
from serve_app.config import parse_app_config
from serve_app.ingress import Ingress

_SLOT_MARGIN = 4  # replicas accept a few more than their slots: the scheduler is the real limit


def check_policy(name: str, options: dict[str, Any]) -> None:
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


def build_app(args: dict[str, Any]) -> Application:
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
    )
    actor_options: dict[str, Any] = {"num_cpus": replicas.num_cpus}
    if replicas.accelerator_type:
        actor_options["accelerator_type"] = replicas.accelerator_type
    if replicas.env:
        actor_options["runtime_env"] = {"env_vars": dict(replicas.env)}
    # A fixed pool, or Serve autoscaling with the queue-aware policy (deployments/autoscaling.py).
    sizing: dict[str, Any] = {"num_replicas": replicas.num_replicas}
    if replicas.autoscaling.enabled:
        sizing = {"autoscaling_config": serve_autoscaling_config(replicas.autoscaling, actors.fingerprint)}
    llm = LLMReplica.options(
        **sizing,
        max_ongoing_requests=replicas.max_num_seqs + replicas.engine_queue_slots + _SLOT_MARGIN,
        ray_actor_options=actor_options,
        request_router_config=RequestRouterConfig(
            request_router_class="deployments.router:GrantedReplicaRouter"),
    ).bind(replicas.model_dump(mode="json"), actors)
    return Ingress.options(
        num_replicas=gateway.ingress_replicas,
        max_ongoing_requests=gateway.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": gateway.ingress_num_cpus},
    ).bind(config.model_dump(mode="json"), actors, llm)
