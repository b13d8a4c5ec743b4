"""Fault injection under streaming load: one component killed at a time while requests stream and queue.

* an LLM replica (killed for good): its in-flight requests resume elsewhere, later ones never wait for it;
* the scheduler actor and the drift actor (Ray restarts them): nothing fails, queued requests complete;
* an ingress replica (Serve replaces it): the streams it held end with a clean error, never a hang, and
  the slots they held are freed; every other request completes.

Every request has a client-side deadline, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
import ray
from conftest import app_actor, app_args, scheduler_handle

pytestmark = pytest.mark.slow
MODEL = "driftsched-sim"
TARGET = 400


def _serve_replicas(deployment):
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if f"#{deployment}#" in a["name"] and a["name"].startswith("SERVE_REPLICA")]


def _llm_replica_actors():
    return _serve_replicas("LLMReplica")


def _kill(actor, restart):
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=not restart)


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
    args = app_args(benchmark_mode=True, **{"replicas.time_scale": 0.1, "replicas.max_num_seqs": 4,
                       "core.scheduler.policy": "fifo", "gateway.queue_timeout_s": 30})
    base_url = serve_cluster.deploy(args)

    async def scenario():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test-gold", max_retries=0, timeout=60)
        first = [asyncio.create_task(_stream(client, i)) for i in range(8)]  # both replicas busy
        await asyncio.sleep(1.0)
        _kill(_llm_replica_actors()[0], restart=False)
        t_kill = time.monotonic()
        later = [asyncio.create_task(_stream(client, 100 + i)) for i in range(6)]
        results = await asyncio.gather(*first, *later, return_exceptions=True)
        return results, time.monotonic() - t_kill

    results, elapsed = asyncio.run(scenario())
    # Every request, in flight on the killed replica or sent after the kill, streamed all its tokens.
    assert all(r == (TARGET, TARGET) for r in results), [r for r in results if r != (TARGET, TARGET)]
    assert elapsed < 30  # nobody waited for the dead replica's timeout
    # Releases are fire-and-forget: the last may reach the scheduler just after its stream ended.
    deadline = time.monotonic() + 10
    stats = ray.get(scheduler_handle(args).view.remote()).stats
    while stats.counters["gold"].completed < 14 and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = ray.get(scheduler_handle(args).view.remote()).stats
    assert stats.counters["gold"].completed == 14


CLIENT_DEADLINE_S = 90  # far past any request's own deadline: reaching it means a request hung


async def _outcome(client, i):
    """("done", tokens) for a full stream, ("error", status) for a clean error, ("hung", None)."""
    try:
        words, usage = await asyncio.wait_for(_stream(client, i), CLIENT_DEADLINE_S)
    except TimeoutError:
        return "hung", None
    except openai.APIStatusError as exc:
        return "error", exc.status_code
    except openai.APIError as exc:  # the stream broke, or an error event arrived mid-stream
        return "error", type(exc).__name__
    return ("done", words) if words == usage == TARGET else ("short", (words, usage))


def _under_kill(base_url, kill):
    """8 streams (filling both replicas) and 6 queued, `kill()` after 1 s, 6 more sent after it."""
    async def scenario():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test-gold", max_retries=0,
                                    timeout=CLIENT_DEADLINE_S)
        first = [asyncio.create_task(_outcome(client, i)) for i in range(14)]
        await asyncio.sleep(1.0)
        kill()
        later = [asyncio.create_task(_outcome(client, 100 + i)) for i in range(6)]
        return await asyncio.gather(*first, *later)

    return asyncio.run(scenario())


def _fault_args():
    return app_args(benchmark_mode=True, **{"replicas.time_scale": 0.1, "replicas.max_num_seqs": 4,
                       "core.scheduler.policy": "fifo", "gateway.queue_timeout_s": 40,
                       "gateway.ingress_replicas": 2})




@pytest.mark.parametrize("role", ["scheduler", "drift"])
def test_killing_a_shared_actor_loses_no_request(serve_cluster, role):
    args = _fault_args()
    base_url = serve_cluster.deploy(args)
    results = _under_kill(base_url, lambda: ray.kill(app_actor(args, role), no_restart=False))
    assert results == [("done", TARGET)] * 20, results
    assert ray.get(scheduler_handle(args).ping.remote(), timeout=10) == "fifo"  # restarted, serving


def test_killing_an_ingress_replica_ends_its_streams_cleanly_and_frees_their_slots(serve_cluster):
    args = _fault_args()
    base_url = serve_cluster.deploy(args)
    results = _under_kill(base_url, lambda: _kill(_serve_replicas("Ingress")[0], restart=True))
    kinds = [kind for kind, _ in results]
    assert "hung" not in kinds and "short" not in kinds, results
    assert kinds.count("done") >= 6, results  # at least the surviving ingress's share completed
    # The killed ingress's streams held slots: its streams stop on the replicas, and a grant made to it
    # that never started is presumed lost after the ledger's 30 s grant grace, so nothing stays running.
    after = _under_kill(base_url, lambda: None)
    assert after == [("done", TARGET)] * 20, after
    deadline = time.monotonic() + 60  # past the 30 s grace
    while time.monotonic() < deadline:
        view = ray.get(scheduler_handle(args).view.remote())
        running = sum(view.stats.in_flight.values())
        if running == 0:
            break
        time.sleep(0.5)
    assert running == 0, (view.stats.in_flight, view.replicas)
