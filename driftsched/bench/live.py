"""`driftsched bench live`: every policy on the live Serve app, one comparison report.

For each policy the app is deployed from `--config` (default: the repository's config.yaml) with:

* the policy, and `benchmark_mode: true` (the simulated engine generates each item's true length);
* the workload's tenants in place of the config's, each with a bench key `sk-bench-<tenant>`, plus a
  `bench-warmup` tenant whose warm-up requests are left out of every figure;
* the core config the simulator would use for this workload (`core_config_for`), with every
  wall-clock quantity converted to real seconds: the replicas run `time_scale` real seconds per modelled
  second, so rate quotas are divided by it, and drift half-lives, the preemption waits, the latency
  objectives (each tenant's and each tier's) and every time-valued policy option (its default where the
  config gives none) are multiplied by it;
* a fresh drift store (no snapshot file), so policies do not learn from each other's runs.

Then: wait for every replica, one warm-up request per replica, the open-loop load (`loadgen`), a
scrape of /metrics for the service's own estimator errors, and removal of the app and its actors.
Latencies are reported in modelled seconds (wall / time_scale), so they compare with the simulator,
and are judged against the unscaled objectives of the tenants the run used (`CoreConfig.objectives()`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from driftsched.bench.loadgen import LoadOptions, Target, run_load, to_records
from driftsched.bench.service import LocalServe, scrape_estimator
from driftsched.core.config import CoreConfig
from driftsched.sim.records import RunRecords
from driftsched.sim.setup import load_app_args  # re-exported: benchmarks read shipped configs with it
from driftsched.sim.workload import Workload
from policies import PolicyContext, options_on_clock, resolve_options

logger = logging.getLogger(__name__)

__all__ = ["LivePlan", "bench_key", "load_app_args", "policy_args", "run_policies", "warm_up"]

WARMUP_TENANT = "bench-warmup"
_QUEUE_SLACK = 64


def bench_key(tenant: str) -> str:
    return f"sk-bench-{tenant}"


def _real_time_core(
    core: CoreConfig, policy: str, time_scale: float, queued: int, timeout_s: float
) -> dict[str, Any]:
    """`core` (workload seconds) for a service running `time_scale` real seconds per modelled second
    whose gateway expires queued requests after `timeout_s` real seconds."""
    data = core.model_dump(mode="json")
    for tenant in data["tenants"]:
        tenant["max_queued"] = queued
        for quota in ("requests_per_minute", "tokens_per_minute"):
            if tenant.get(quota) is not None:
                tenant[quota] = tenant[quota] / time_scale
        for objective in ("latency_slo_s", "ttft_slo_s", "tpot_slo_s"):
            if tenant.get(objective) is not None:
                tenant[objective] *= time_scale
    for objectives in data["tier_objectives"].values():
        objectives["ttft_s"] *= time_scale
        objectives["tpot_s"] *= time_scale
    data["tenants"].append({"name": WARMUP_TENANT, "tier": 0, "weight": 1.0})
    drift = data["estimator"]["drift"]
    drift["half_life_s"] *= time_scale
    drift["recent_half_life_s"] *= time_scale
    scheduler = data["scheduler"]
    # the options the simulator gives this policy (simulator.py: the configured ones and those it
    # derives from the run's queue deadline and tenants), on the replicas' clock
    options = scheduler["policy_options"] if policy == scheduler["policy"] else {}
    options = resolve_options(policy, options, PolicyContext.of(core, timeout_s / time_scale))
    scheduler["policy_options"] = options_on_clock(policy, options, time_scale)
    scheduler["policy"] = policy
    scheduler["max_queued_total"] = queued
    preemption = scheduler["preemption"]
    preemption["wait_s"] *= time_scale
    preemption["min_run_s"] *= time_scale
    admission = scheduler["admission"]  # its windows and half-lives run on the service's real clock
    for key in ("rate_half_life_s", "min_measured_s", "share_half_life_s"):
        admission[key] *= time_scale
    admission["max_retry_after_s"] = max(1.0, admission["max_retry_after_s"] * time_scale)
    return data


BENCH_STREAM_MODELLED_S = 0.5
"""Modelled seconds between the token chunks of one stream in the bench (real: times `time_scale`)."""


def policy_args(
    base: dict[str, Any], core: CoreConfig, policy: str, time_scale: float, timeout_s: float, num_items: int
) -> dict[str, Any]:
    """The app args of one policy's run (see module docstring)."""
    args = copy.deepcopy(base)
    queued = num_items + _QUEUE_SLACK
    args["core"] = _real_time_core(core, policy, time_scale, queued, timeout_s)
    args["benchmark_mode"] = True
    tenants = [t["name"] for t in args["core"]["tenants"]]
    args["auth"] = {"demo_keys": {bench_key(t): t for t in tenants}, "keys_env": None, "keys_file": None}
    replicas = args.setdefault("replicas", {})
    if replicas.get("engine", "sim") == "sim":
        replicas["time_scale"] = time_scale
        # Coarser token chunks, fixed on the modelled clock: every chunk of every stream crosses Serve
        # twice (replica -> ingress -> proxy), and with 64 streams a small machine cannot keep up with
        # one per sequence every 10 ms. At time scale 0.25 and 50 ms real (0.2 modelled s) the 2-core
        # machine ran 1.20x slower than modelled; at 0.5 modelled s, 1.04x. TTFT is then measured to
        # about one interval.
        replicas.setdefault("stream_interval_s", min(1.0, BENCH_STREAM_MODELLED_S * time_scale))
    from deployments.replica_config import ReplicaConfig

    sizing = ReplicaConfig.model_validate({k: v for k, v in replicas.items()
                                           if k in ("num_replicas", "max_num_seqs", "engine_queue_slots")})
    slots = sizing.num_replicas * (sizing.max_num_seqs + sizing.engine_queue_slots)
    gateway = args.setdefault("gateway", {})
    gateway["queue_timeout_s"] = timeout_s
    gateway["drift_snapshot_path"] = None
    gateway["ingress_max_ongoing_requests"] = max(
        int(gateway.get("ingress_max_ongoing_requests", 20_000)), queued + slots + 1_000
    )
    return args


def warm_up(base_url: str, replicas: int, timeout_s: float) -> None:
    """One tiny request per replica as the warm-up tenant: the whole path is live before the load."""
    body = {"prompt": "warm up", "max_tokens": 1, "driftsched_target_tokens": 1}
    headers = {"Authorization": f"Bearer {bench_key(WARMUP_TENANT)}"}
    for _ in range(replicas):
        resp = httpx.post(base_url + "/completions", json=body, headers=headers, timeout=timeout_s)
        if resp.status_code != 200:
            raise RuntimeError(f"warm-up request failed: HTTP {resp.status_code} {resp.text[:200]}")


@dataclass(frozen=True, slots=True)
class LivePlan:
    """What `run_policies` runs: the app's base args, the workload and its core config, pacing."""

    base_args: dict[str, Any]
    workload: Workload
    core: CoreConfig
    options: LoadOptions
    port: int = 0


def run_policies(
    plan: LivePlan, policies: Sequence[str], serve: LocalServe | None = None
) -> list[RunRecords]:
    """Deploy, warm up, load and remove the app once per policy; one `RunRecords` each.

    On `serve` when given (several seeds on one Ray instance), else on a private one of its own."""
    if serve is None:
        with LocalServe(port=plan.port) as own:
            return run_policies(plan, policies, own)
    items = plan.workload.items
    ts = plan.options.time_scale
    out = []
    for policy in policies:
        args = policy_args(plan.base_args, plan.core, policy, ts, plan.options.timeout_s, len(items))
        logger.info("policy %s: deploying", policy)
        base_url = serve.deploy(args)
        try:
            warm_up(base_url, int(args["replicas"].get("num_replicas", 2)), plan.options.timeout_s)
            keys = {t: bench_key(t) for t in (s.name for s in plan.workload.tenants)}
            result = asyncio.run(run_load(items, Target(base_url, keys), plan.options))
            completed = sum(r.status == "completed" for r in result.records)
            est = scrape_estimator(serve.root, serve.metrics_token, completed, frozenset({WARMUP_TENANT}))
        finally:
            serve.remove()
        estimator = {"uncorrected": est["uncorrected"], "corrected": est["corrected"]}
        extras = {"service_observations": est["observations"], "time_scale": ts}
        out.append(to_records(policy, items, result, ts, estimator, extras))
        logger.info("policy %s: %s in %.1f s", policy, result.statuses(), result.wall_s)
    return out
