"""Fault injection under streaming load: a killed replica costs no accepted request."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
import ray
from conftest import app_args, scheduler_handle

pytestmark = pytest.mark.slow
MODEL = "driftsched-sim"
TARGET = 400


def _llm_replica_actors():
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if "LLMReplica" in a["name"] and a["name"].startswith("SERVE_REPLICA")]


async def _stream(client, i):
    stream = await client.completions.create(
        model=MODEL, prompt=f"job {i}", max_tokens=1000, stream=True,
        stream_options={"include_usage": True}, extra_body={"driftsched_target_tokens": TARGET})
    text, usage = [], None
    async for chunk in stream:
        usage = chunk.usage or usage
        text += [c.text for c in chunk.choices if c.text]
    return len("".join(text).split()), usage.completion_tokens if usage else None


def test_killing_a_replica_mid_stream_resumes_its_requests_elsewhere(serve_cluster):
    args = app_args(**{"replicas.time_scale": 0.1, "replicas.max_num_seqs": 4,
                       "core.scheduler.policy": "fifo", "gateway.queue_timeout_s": 30})
    base_url = serve_cluster.deploy(args)

    async def scenario():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test-gold", max_retries=0, timeout=60)
        first = [asyncio.create_task(_stream(client, i)) for i in range(8)]  # both replicas busy
        await asyncio.sleep(1.0)
        victim = _llm_replica_actors()[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        t_kill = time.monotonic()
        later = [asyncio.create_task(_stream(client, 100 + i)) for i in range(6)]
        results = await asyncio.gather(*first, *later, return_exceptions=True)
        return results, time.monotonic() - t_kill

    results, elapsed = asyncio.run(scenario())
    # Every request, in flight on the killed replica or sent after the kill, streamed all its tokens.
    assert all(r == (TARGET, TARGET) for r in results), [r for r in results if r != (TARGET, TARGET)]
    assert elapsed < 30  # nobody waited for the dead replica's timeout
    stats = ray.get(scheduler_handle(args).view.remote()).stats
    assert stats.counters["gold"].completed == 14
