"""Preempt-and-resume through the live app: a long runner gives way, its client sees one stream.

Every slot is held by a long bronze request, running or granted ahead (2 replicas x (2 running + 1
ahead)): a gold request revokes a grant ahead (which goes back to the queue and resumes later, at no
cost), then waits inside that engine behind the running ones until it preempts one of them. Every
request still sees one stream with exact usage."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
import ray
from conftest import app_args, scheduler_handle

from deployments.engine import approx_token_count

pytestmark = pytest.mark.slow
MODEL = "driftsched-sim"
LONG = 1200


async def _stream(base_url, key, t0, **kwargs):
    """Stream one completion; (text, usage, first-token time, finish time) relative to t0."""
    c = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=90)
    stream = await c.completions.create(model=MODEL, stream=True,
                                        stream_options={"include_usage": True}, **kwargs)
    text, usage, first, finish_reasons = [], None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.text:
                first = first if first is not None else time.monotonic() - t0
                text.append(choice.text)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    return "".join(text), usage, first, time.monotonic() - t0, finish_reasons


def test_a_long_runner_is_preempted_for_a_higher_tier_and_resumes_in_one_stream(serve_cluster):
    args = app_args(benchmark_mode=True, **{
        "core.scheduler.policy": "priority",
        "core.scheduler.preemption": {"enabled": True, "wait_s": 0.3, "min_run_s": 0.1,
                                      "max_per_request": 1, "near_end_tokens": 32},
        "replicas.time_scale": 0.5,
    })
    base_url = serve_cluster.deploy(args)
    scheduler = scheduler_handle(args)

    async def scenario():
        t0 = time.monotonic()
        long = {"prompt": "write a detailed essay about rivers", "max_tokens": 2000,
                "extra_body": {"driftsched_target_tokens": LONG}}
        blockers = [asyncio.create_task(_stream(base_url, "sk-test-bronze", t0, **long)) for _ in range(6)]
        # Every slot (2 replicas x (2 running + 1 ahead)) is held by a long bronze request.
        deadline = time.monotonic() + 60
        while (await scheduler.view.remote()).stats.counters["bronze"].dispatched < 6:
            assert time.monotonic() < deadline, "the bronze requests were never all granted"
            await asyncio.sleep(0.05)
        short = {"prompt": "capital of France?", "max_tokens": 30,
                 "extra_body": {"driftsched_target_tokens": 20}}
        gold = await _stream(base_url, "sk-test-gold", t0, **short)
        return gold, await asyncio.gather(*blockers)

    gold, blockers = asyncio.run(scenario())
    text, usage, _, gold_done, _ = gold
    assert usage.completion_tokens == 20 and len(text.split()) == 20
    # Every long request streamed exactly its tokens once, in one stream, with one usage and one finish.
    for text, usage, _, _, reasons in blockers:
        assert usage.completion_tokens == LONG and len(text.split()) == LONG
        assert usage.prompt_tokens == approx_token_count("write a detailed essay about rivers")
        assert reasons == ["length" if LONG >= 2000 else "stop"]
    # The gold request did not wait for a long one to finish: one was preempted for it.
    assert gold_done < min(done for *_, done, _ in blockers)
    stats = ray.get(scheduler.view.remote()).stats
    assert stats.counters["bronze"].preempted >= 1
    assert stats.counters["bronze"].completed == 6
    bronze = stats.counters["bronze"]
    assert bronze.revoked >= 1  # a grant ahead made way for gold first
    assert bronze.dispatched == 6 + bronze.preempted + bronze.revoked  # each stop cost one more grant
