"""Queue-aware autoscaling through the live app: a burst scales the simulated replicas up, the queued
requests run on the new replicas, and the pool returns to its minimum afterwards."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import ray
from conftest import METRICS_HEADERS, app_args, scheduler_handle
from ray import serve

pytestmark = pytest.mark.slow
MODEL = "driftsched-sim"
AUTOSCALING = {
    "enabled": True, "min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 0.5, "downscale_delay_s": 3.0,
    "poll_interval_s": 0.25, "rate_window_s": 2.0, "drain_s": 2.0, "min_budget_s": 1.0,
    "prior_tokens_per_s": 300.0,
}


def _running_replicas() -> int:
    status = serve.status().applications["driftsched"].deployments["LLMReplica"]
    return int(status.replica_states.get("RUNNING", 0))


def _wait_for(predicate, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def _burst(base_url: str, n: int) -> list[str]:
    """`n` requests of 300 tokens at once; the replica that served each one."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test-gold", max_retries=0, timeout=60)

    async def one(i: int) -> str:
        raw = await client.completions.with_raw_response.create(
            model=MODEL, prompt=f"burst {i}", max_tokens=400, extra_body={"driftsched_target_tokens": 300})
        return raw.headers["x-driftsched-replica"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_burst_scales_up_serves_the_queue_on_new_replicas_and_scales_back(serve_cluster):
    args = app_args(benchmark_mode=True, **{"replicas.autoscaling": AUTOSCALING, "replicas.time_scale": 1.0,
                       "replicas.stream_interval_s": 0.05})
    base_url = serve_cluster.deploy(args)
    # A redeploy over an earlier app returns before the old version's replicas have all stopped.
    _wait_for(lambda: _running_replicas() == 1, 40.0, "the deploy to settle at min_replicas")
    scheduler = scheduler_handle(args)
    _wait_for(lambda: len(ray.get(scheduler.view.remote()).replicas) == 1, 20.0,
              "the scheduler to know one replica")
    before = set(ray.get(scheduler.view.remote()).replicas)

    served = asyncio.run(_burst(base_url, 16))

    new = set(served) - before
    assert new, f"every queued request ran on the first replica: {sorted(set(served))}"
    assert sum(replica in new for replica in served) >= 4, served
    view = ray.get(scheduler.view.remote())
    assert view.autoscale is not None and view.autoscale["replicas"] >= 2, view.autoscale
    _wait_for(lambda: _running_replicas() == 1, 40.0, "the pool to return to min_replicas")
    assert ray.get(scheduler.view.remote()).autoscale["reason"] == "idle"
    metrics = httpx.get(f"http://127.0.0.1:{serve_cluster.port}/metrics", headers=METRICS_HEADERS).text
    assert 'driftsched_autoscale_desired_replicas{reason="idle"} 1.0' in metrics
    assert "driftsched_autoscale_target_replicas 1.0" in metrics
