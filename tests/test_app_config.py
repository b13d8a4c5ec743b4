"""The whole application config is checked when the app is built: a bad value fails `serve run` at once,
naming the field; every config this project ships or builds still passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import app_args, vllm_replicas
from pydantic import BaseModel

from benchmarks import bench_gateway
from driftsched.bench.live import load_app_args, policy_args
from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S, TenantConfig, parse_core_config
from driftsched.core.errors import ConfigError
from policies import POLICIES
from serve_app.app import build_app
from serve_app.config import AppConfig, parse_app_config

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


def test_the_scheduler_runs_bounded_with_options_derived_from_the_deployment():
    tenants = [{"name": "gold", "latency_slo_s": 4.0}, {"name": "bronze"}, {"name": "tiny"}]
    args = app_args(**{"core.scheduler.policy": "bounded", "core.tenants": tenants,
                       "gateway.queue_timeout_s": 25.0})
    core = parse_app_config(args).scheduler_core()
    assert core.scheduler.policy_options == {"horizon_s": 25.0, "tenant_horizon_s": {"gold": 4.0}}
    args["core"]["scheduler"]["policy_options"] = {"horizon_s": 10.0}  # what the config gives wins
    assert parse_app_config(args).scheduler_core().scheduler.policy_options["horizon_s"] == 10.0
    args["core"]["scheduler"]["policy"] = "fifo"  # a policy that derives nothing gets nothing
    args["core"]["scheduler"]["policy_options"] = {}
    assert parse_app_config(args).scheduler_core().scheduler.policy_options == {}


def test_the_code_defaults_are_the_shipped_scheduling():
    config = parse_app_config({"core": {"tenants": [{"name": "a"}]}})
    assert config.core.scheduler.policy == "slo"
    assert config.core.scheduler.admission.enabled is True
    assert config.core.scheduler.preemption.enabled is False
    assert config.gateway.queue_timeout_s == DEFAULT_QUEUE_TIMEOUT_S
    assert config.scheduler_core().scheduler.policy_options == {}  # slo derives nothing


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


def _defaults_repeated(model: type[BaseModel], given: dict[str, Any], path: str) -> list[str]:
    """The settings under `given` (a mapping for `model`) whose value is the code's default."""
    found = []
    for key, value in given.items():
        field, where = model.model_fields[key], f"{path}.{key}"
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel) and isinstance(value, dict):
            found += _defaults_repeated(nested, value, where)
        elif key == "tenants":
            for i, tenant in enumerate(value):
                found += _defaults_repeated(TenantConfig, tenant, f"{where}.{i}")
        elif value == field.get_default(call_default_factory=True):
            found.append(where)
    return found


@pytest.mark.parametrize("name", ["config.yaml", "config.cpu.yaml", "config.l4.yaml"])
def test_shipped_configs_say_only_what_differs_from_the_code(name):
    assert _defaults_repeated(AppConfig, _shipped(name), "args") == []


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_configs_tests_and_benchmarks_build_are_valid(policy):
    build_app(app_args(**{"core.scheduler.policy": policy}))
    base = _shipped("config.yaml")
    core = parse_core_config(base["core"])
    build_app(policy_args(base, core, policy, time_scale=0.05, timeout_s=60, num_items=500))


def test_the_benchmark_configs_are_valid():
    build_app(bench_gateway._driftsched_args())
