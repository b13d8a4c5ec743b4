"""Scheduling through the live app: policy order under contention, shared drift statistics."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
import ray
from conftest import app_actor, app_args, scheduler_handle

pytestmark = pytest.mark.slow
MODEL = "driftsched-sim"


async def _first_token_time(base_url, key, t0, **kwargs):
    c = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    stream = await c.completions.create(model=MODEL, stream=True, **kwargs)
    first = None
    async for _chunk in stream:
        first = first if first is not None else time.monotonic() - t0
    return first


async def _contend(base_url, waiting):
    """Fill the 4 slots with long requests, queue `waiting` (key, kwargs) in order; first-token times."""
    t0 = time.monotonic()
    blockers = [
        asyncio.create_task(_first_token_time(
            base_url, "sk-test-bronze", t0, prompt="block", max_tokens=2000,
            extra_body={"driftsched_target_tokens": 1500}))
        for _ in range(4)
    ]
    await asyncio.sleep(0.4)
    queued = []
    for key, kwargs in waiting:
        queued.append(asyncio.create_task(_first_token_time(base_url, key, t0, **kwargs)))
        await asyncio.sleep(0.05)  # a definite arrival order
    times = await asyncio.gather(*queued)
    await asyncio.gather(*blockers)
    return times


def test_priority_serves_high_tier_before_queued_low_tier(serve_cluster):
    args = app_args(benchmark_mode=True, **{"core.scheduler.policy": "priority", "replicas.time_scale": 0.2})
    base_url = serve_cluster.deploy(args)
    small = {"prompt": "hi", "max_tokens": 30, "extra_body": {"driftsched_target_tokens": 20}}
    waiting = [("sk-test-bronze", small)] * 4 + [("sk-test-gold", small)] * 4  # low tier arrives first
    times = asyncio.run(_contend(base_url, waiting))
    bronze, gold = times[:4], times[4:]
    # Bronze requests granted ahead into the engines' queues (one a replica) are revoked for the
    # golds, so two golds start the moment the blockers end, before any scheduler round trip. The
    # freed slots then go to the other two golds and two bronzes in one dispatch step, whose first
    # tokens come within a few tens of ms of one another in either order (CI saw a bronze at 2.144 s
    # between golds at 2.115 and 2.158 s). Under FIFO the bronzes hold the slots ahead and start first.
    assert sorted(gold)[1] < min(bronze), (gold, bronze)


def test_sjf_lets_short_jobs_overtake_long_ones(serve_cluster):
    args = app_args(benchmark_mode=True, **{"core.scheduler.policy": "sjf", "replicas.time_scale": 0.2})
    base_url = serve_cluster.deploy(args)
    long = {"prompt": "write a detailed essay about rivers", "max_tokens": 1000,
            "extra_body": {"driftsched_target_tokens": 400}}
    short = {"prompt": "capital of France?", "max_tokens": 16,
             "extra_body": {"driftsched_target_tokens": 8}}
    waiting = [("sk-test-gold", long)] * 4 + [("sk-test-gold", short)] * 4  # long jobs arrive first
    times = asyncio.run(_contend(base_url, waiting))
    longs, shorts = times[:4], times[4:]
    # Blockers free their slots a few ms apart and a short job's slot is soon reused, so a long job
    # granted in the same step as the last shorts may show its first token a fraction of a millisecond
    # before theirs (seen in CI: 3.3681 s against 3.3688 s). Under FIFO the four longs would take every
    # slot and the shorts would start only after a long finished (400 tokens, ~2 s here).
    assert sorted(shorts)[1] < min(longs), (shorts, longs)
    assert max(shorts) < min(longs) + 0.5, (shorts, longs)


def test_drift_of_requests_on_both_replicas_reaches_shared_stats_and_changes_estimates(serve_cluster):
    args = app_args(benchmark_mode=True, **{"core.scheduler.policy": "fifo"})
    base_url = serve_cluster.deploy(args)
    client = openai.OpenAI(base_url=base_url, api_key="sk-test-gold", max_retries=0, timeout=30)
    ask = {"model": MODEL, "prompt": "what is the capital of Peru?", "max_tokens": 60}

    def estimate(target):
        raw = client.completions.with_raw_response.create(
            **ask, extra_body={"driftsched_target_tokens": target})
        raw.parse()
        return raw.headers["x-driftsched-category"], float(raw.headers["x-driftsched-estimated-tokens"])

    category, before = estimate(4)
    assert category == "qa"

    async def burst():  # 12 at once on 2 x 2 slots: both replicas must serve some
        c = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test-gold", max_retries=0, timeout=30)
        await asyncio.gather(*(c.completions.create(**ask, extra_body={"driftsched_target_tokens": 4})
                               for _ in range(12)))

    asyncio.run(burst())
    drift = app_actor(args, "drift")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        snap = ray.get(drift.snapshot.remote()).state
        counts = {(t, c): int(values[1]) for t, c, *values in snap["errors"]}
        if counts.get(("gold", "qa"), 0) >= 13:
            break
        time.sleep(0.2)
    assert counts.get(("gold", "qa")) == 13, counts
    time.sleep(1.0)  # the ingress refreshes its copy
    _, after = estimate(4)
    assert after < before / 2, (before, after)
    view = ray.get(scheduler_handle(args).view.remote())
    assert len(view.replicas) == 2
