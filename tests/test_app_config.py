"""The whole application config is checked when the app is built: a bad value fails `serve run` at once,
naming the field; every config this project ships or builds still passes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import app_args, vllm_replicas

from driftsched.bench.live import load_app_args, policy_args
from driftsched.core.config import parse_core_config
from driftsched.core.errors import ConfigError
from policies import POLICIES
from serve_app.app import build_app

ROOT = Path(__file__).resolve().parents[1]


def _build(args: dict[str, Any]) -> str:
    """The ConfigError message `build_app` raises for `args`."""
    with pytest.raises(ConfigError) as info:
        build_app(args)
    return str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        # the scheduling core
        ("core.scheduler.policy", "sjff", "core.scheduler.policy: unknown policy 'sjff'"),
        ("core.scheduler.max_queued_total", 0, "core.scheduler.max_queued_total"),
        ("core.scheduler.max_request_tokens", 0, "core.scheduler.max_request_tokens"),
        ("core.scheduler.overload_retry_after_s", -1, "core.scheduler.overload_retry_after_s"),
        ("core.scheduler.kv_watermark", 1.0, "core.scheduler.kv_watermark"),
        ("core.scheduler.preemption.max_candidates", 0, "max_candidates >= 1"),
        ("core.estimator.reference_prompt_tokens", 0, "core.estimator.reference_prompt_tokens"),
        ("core.estimator.default_prior", -5, "core.estimator.default_prior"),
        ("core.estimator.priors", {"sumarize": 100}, "unknown categories ['sumarize']"),
        ("core.estimator.prompt_exponents", {"novel": 0.5}, "core.estimator.prompt_exponents"),
        ("core.estimator.drift.half_life_s", -1, "half-lives must be > 0"),
        ("core.classifier.long_prompt_tokens", 0, "core.classifier.long_prompt_tokens"),
        ("core.tenants", [{"name": "gold", "tokens_per_minute": float("nan")}],
         "core.tenants.0.tokens_per_minute: Input should be a finite number"),
        ("core.tenants", [{"name": "gold", "tier": 12}], "core.tenants.0.tier"),
        # the replicas
        ("replicas.max_num_seqs", 0, "replicas.max_num_seqs"),
        ("replicas.time_scale", 0, "replicas.time_scale"),
        ("replicas.max_num_batched_tokens", 64, "raise max_num_batched_tokens or lower max_num_seqs"),
        ("replicas.output_means", {"qa": -1.0}, "replicas.output_means"),
        ("replicas.served_model_name", "", "replicas.served_model_name"),
        ("replicas.heartbeat_s", 2.0, "raise gateway.replica_timeout_s or lower replicas.heartbeat_s"),
        ("replicas.autoscaling", {"enabled": True, "min_replicas": 3, "max_replicas": 2},
         "replicas.autoscaling: max_replicas (2) must be >= min_replicas (3)"),
        ("replicas.autoscaling", {"target_utilization": 0}, "replicas.autoscaling.target_utilization"),
        ("replicas.autoscaling", {"enabled": True, "max_replicas": 600},
         "replicas.autoscaling.max_replicas"),
        ("replicas.autoscaling", {"enabled": True, "max_replicas": 64},  # 64 x 2 slots + 40 > 100
         "raise ingress_max_ongoing_requests"),
        # the gateway
        ("gateway.queue_timeout_s", float("inf"), "gateway.queue_timeout_s: Input should be a finite"),
        ("gateway.stall_timeout_s", 0, "gateway.stall_timeout_s"),
        ("gateway.replica_timeout_s", 0.3, "gateway.replica_timeout_s (0.3) must exceed twice"),
        ("gateway.ingress_max_ongoing_requests", 10, "raise ingress_max_ongoing_requests"),
        ("gateway.nonsense", 1, "gateway.nonsense: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_fails_the_build_naming_its_field(path, value, needle):
    overrides = {path: value}
    if path == "replicas.max_num_batched_tokens":
        overrides["replicas.max_num_seqs"] = 128
    if path == "replicas.autoscaling" and value.get("max_replicas") == 64:
        overrides["gateway.ingress_max_ongoing_requests"] = 100  # enough for the fixed pool of 2
    assert needle in _build(app_args(**overrides))


@pytest.mark.parametrize(
    ("policy", "options", "needle"),
    [
        ("aging", {"age_step_s": -1}, "age_step_s must be > 0 seconds, got -1; try 10"),
        ("aging", {"age_step_s": "10"}, "age_step_s: Input should be a valid number"),
        ("aging", {"age_step_s": True}, "age_step_s: Input should be a valid number"),
        ("aging", {"age_step_s": float("inf")}, "age_step_s: Input should be a finite number"),
        ("aging", {"age_step": 10}, "age_step: Extra inputs are not permitted (its options: age_step_s)"),
        ("fifo", {"age_step_s": 10}, "(its options: none)"),
        ("sjf", {"size": "tokens"}, "size must be one of ('kv', 'output')"),
        ("bounded", {"horizon_s": 0}, "horizon_s must be > 0 seconds"),
        ("bounded", {"tenant_horizon_s": {"gold": "soon"}}, "tenant_horizon_s.gold"),
    ],
)
def test_a_bad_policy_option_fails_the_build_naming_it(policy, options, needle):
    message = _build(app_args(**{"core.scheduler.policy": policy, "core.scheduler.policy_options": options}))
    assert f"core.scheduler.policy_options (policy '{policy}')" in message
    assert needle in message


def test_vllm_context_must_hold_the_largest_admitted_request(tmp_path):
    args = app_args(replicas=vllm_replicas("/nonexistent/model", tmp_path))
    assert "exceeds replicas.engine_args.max_model_len (512)" in _build(args)
    args["core"]["scheduler"]["max_request_tokens"] = 512
    build_app(args)  # what the vLLM tests deploy


def test_secrets_are_never_echoed_in_a_config_error():
    args = app_args(**{"auth.demo_keys": {"sk-very-secret": "nobody"}})
    assert "sk-very-secret" not in _build(args)


def _shipped(name: str) -> dict[str, Any]:
    return load_app_args(ROOT / name)


@pytest.mark.parametrize("name", ["config.yaml", "config.cpu.yaml", "config.l4.yaml"])
def test_shipped_configs_build(name):
    build_app(_shipped(name))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_configs_tests_and_benchmarks_build_are_valid(policy):
    build_app(app_args(**{"core.scheduler.policy": policy}))
    base = _shipped("config.yaml")
    core = parse_core_config(base["core"])
    build_app(policy_args(base, core, policy, time_scale=0.05, timeout_s=60, num_items=500))


def test_the_benchmark_configs_are_valid():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gateway
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    build_app(bench_gateway._driftsched_args())
