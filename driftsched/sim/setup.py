"""What a simulation runs on, read from a shipped config: core settings, replicas, deadline and tenants.

`driftsched simulate --config FILE` takes a Serve config (``config.l4.yaml``: the DriftSched
application's ``args:``), the app's args on their own, or a bare core mapping. From it:

* the core: scheduler (policy, options, preemption, limits), estimator and classifier, as shipped;
* from a Serve config or app args, also the replicas the simulator models (their count and model, and
  the engine's ``max_num_seqs``, ``engine_queue_slots`` and ``max_num_batched_tokens``, which bound a
  modelled step as they bound vLLM's) and the queue deadline (``gateway.queue_timeout_s``);
* the tenants: the config's, with their quotas, queue limits and latency objectives, when every
  workload tenant maps onto one of them (``--tenant-map``; by default a tenant keeps its name and the
  paper workload's tenants map as `PAPER_TENANT_MAP` where the config has the target tenants).
  Otherwise the workload's own tenants replace the config's (`core_config_for`).

Only this entry-point module reads the file; the simulator receives typed configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from deployments.replica_config import ReplicaConfig
from driftsched.core.config import CoreConfig, parse_core_config
from driftsched.sim import perf_model
from driftsched.sim.workload import TenantSpec, Workload

PAPER_TENANT_MAP = {
    "support-bot": "interactive",
    "code-assist": "batch",
    "docs-pipeline": "batch",
    "content-studio": "free",
}
"""The paper workload's tenants on the shipped configs' (config*.yaml): the chat bot is the interactive
tenant, the code assistant and the document pipeline are batch, the content studio is free."""

CHECKPOINT_SHAPES = {
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b-fp8",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b-bf16",
    "Qwen/Qwen3-1.7B": "qwen3-1.7b-bf16",
    "Qwen/Qwen3-0.6B": "qwen3-0.6b-bf16",
}
"""vLLM checkpoints (a config's ``replicas.model`` with engine vllm) -> the performance model's shape."""


@dataclass(frozen=True, slots=True)
class ShippedSetup:
    """What a config file says about a simulation; None where the file says nothing."""

    core: CoreConfig | None
    """None: no file (the workload's tenants on default settings)."""
    replicas: int | None = None
    model: str | None = None
    """A `perf_model.MODEL_SHAPES` name."""
    engine: Mapping[str, Any] | None = None
    """PerfModel keyword arguments from the replicas' engine settings."""
    queue_timeout_s: float | None = None


def load_app_args(path: Path) -> dict[str, Any]:
    """The DriftSched app's `args:` from a Serve config file (or a file holding just the args)."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "applications" in data:
        for app in data["applications"]:
            if str(app.get("import_path", "")).startswith("serve_app.app"):
                return dict(app.get("args") or {})
        raise ValueError(f"{path}: no application with import_path serve_app.app:build_app")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a Serve config or the app's args mapping")
    return data


def parse_mapping(values: list[str] | None, what: str) -> dict[str, str]:
    """`a=b` pairs and/or JSON/YAML files of a mapping, merged in order."""
    out: dict[str, str] = {}
    for value in values or ():
        if "=" in value and not Path(value).exists():
            left, _, right = value.partition("=")
            if not left or not right:
                raise ValueError(f"{what}: expected NAME=VALUE, got {value!r}")
            out[left] = right
            continue
        data = yaml.safe_load(Path(value).read_text())  # JSON is YAML
        if not isinstance(data, dict):
            raise ValueError(f"{what}: {value} must hold a mapping")
        out.update({str(k): str(v) for k, v in data.items()})
    return out


def shape_name(model: str) -> str:
    """The performance-model shape of a config's ``replicas.model`` (a shape name or a vLLM checkpoint)."""
    if model in perf_model.MODEL_SHAPES:
        return model
    if model in CHECKPOINT_SHAPES:
        return CHECKPOINT_SHAPES[model]
    raise ValueError(
        f"no performance model for replicas.model {model!r}; pass --model with one of "
        f"{', '.join(sorted(perf_model.MODEL_SHAPES))}"
    )


def load_setup(path: Path) -> ShippedSetup:
    """Read `path` (see the module docstring)."""
    args = load_app_args(path)
    if "core" not in args:
        return ShippedSetup(parse_core_config(args))
    from serve_app.config import parse_app_config

    app = parse_app_config(args)
    replicas = app.replicas
    return ShippedSetup(
        app.core, replicas.num_replicas, shape_name(replicas.model), engine_settings(replicas),
        app.gateway.queue_timeout_s,
    )


def engine_settings(replicas: ReplicaConfig) -> dict[str, Any]:
    """PerfModel keyword arguments from the replicas' engine settings (what bounds a modelled step)."""
    engine: dict[str, Any] = {
        "max_num_seqs": replicas.max_num_seqs,
        "max_num_batched_tokens": replicas.max_num_batched_tokens,
        "engine_queue_slots": replicas.engine_queue_slots,
    }
    if "gpu_memory_utilization" in replicas.engine_args:
        engine["gpu_memory_utilization"] = float(replicas.engine_args["gpu_memory_utilization"])
    return engine


def tenant_map(workload: Workload, core: CoreConfig, given: Mapping[str, str]) -> dict[str, str] | None:
    """Workload tenant -> config tenant for every workload tenant, or None if some has no match.

    `given` (``--tenant-map``) is used as it is and must cover every tenant; without it a tenant keeps
    its name where the config has it, else takes `PAPER_TENANT_MAP`'s target where the config has that.
    """
    known = set(core.tenant_map())
    names = [t.name for t in workload.tenants]
    if given:
        missing = sorted(n for n in names if given.get(n) not in known)
        if missing:
            raise ValueError(
                f"--tenant-map sends workload tenants {missing} to no tenant of the config "
                f"({', '.join(sorted(known))}); map each of them"
            )
        return {n: given[n] for n in names}
    out = {}
    for name in names:
        target = name if name in known else PAPER_TENANT_MAP.get(name)
        if target not in known:
            return None
        out[name] = target
    return out


def on_config_tenants(
    workload: Workload, core: CoreConfig, mapping: Mapping[str, str], kv_capacity_tokens: int
) -> tuple[Workload, CoreConfig]:
    """The workload sent as the config's tenants, and the core config it runs under.

    The core config is the shipped one with ``max_request_tokens`` capped by one replica's KV capacity
    (a longer request could never be placed), as `core_config_for` does.
    """
    items = [replace(it, tenant=mapping[it.tenant]) for it in workload.items]
    tenants = tuple(
        TenantSpec(t.name, t.tier, t.weight, t.requests_per_minute, t.tokens_per_minute) for t in core.tenants
    )
    data = core.model_dump()
    scheduler = data["scheduler"]
    scheduler["max_request_tokens"] = min(scheduler["max_request_tokens"], kv_capacity_tokens)
    workload = replace(workload, items=items, tenants=tenants)  # keeps its phases and shock instant
    return workload, CoreConfig.model_validate(data)
