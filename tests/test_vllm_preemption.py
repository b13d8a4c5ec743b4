"""Revoke, preempt and resume on real vLLM (CPU build, tiny model): exact token counts across them.

Its own app (one replica, two running slots and one granted ahead, `priority` with preemption on), so
the other vLLM tests keep their settings; deleted at the end of the module. Three long bronze requests
fill it (the third waits in vLLM's queue, granted ahead); a gold one revokes that grant, waits in
vLLM's queue in its place and preempts a running bronze one. Every stream is one stream, with exact
usage.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time

import openai
import pytest
import ray
from conftest import app_args, scheduler_handle, vllm_replicas

# find_spec, not importorskip: collecting this module (for a fast run too) must not import vLLM.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]

MODEL = "tiny-llama"
LONG = 400


@pytest.fixture(scope="module")
def vllm_preempt_app(serve_cluster, tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-preempt")
    args = app_args(benchmark_mode=True, **{
        "core.scheduler.policy": "priority",
        "core.scheduler.max_request_tokens": 512,
        "core.scheduler.preemption": {"enabled": True, "wait_s": 0.2, "min_run_s": 0.05,
                                      "max_per_request": 1, "near_end_tokens": 16},
        "replicas": vllm_replicas(tiny_model_dir, work, num_replicas=1, max_num_seqs=2,
                                  engine_queue_slots=1, heartbeat_s=0.1),
        "gateway.stall_timeout_s": 60,
        "gateway.queue_timeout_s": 60,
    })
    base_url = serve_cluster.deploy(args)
    yield args, base_url
    from ray import serve

    serve.delete("driftsched")


async def _stream(base_url, key, t0, prompt, max_tokens, target):
    c = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    stream = await c.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=True, temperature=0.0,
        stream_options={"include_usage": True}, extra_body={"driftsched_target_tokens": target})
    usages, finishes = [], []
    async for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        finishes += [ch.finish_reason for ch in chunk.choices if ch.finish_reason]
    return usages, finishes, time.monotonic() - t0


def test_preempted_vllm_request_resumes_with_its_exact_token_count(vllm_preempt_app, tokenizer_of):
    args, base_url = vllm_preempt_app
    prompt = "Write a detailed report on the rivers of Europe"
    scheduler = scheduler_handle(args)

    async def scenario():
        t0 = time.monotonic()
        blockers = [asyncio.create_task(_stream(base_url, "sk-test-bronze", t0, prompt, 480, LONG))
                    for _ in range(3)]
        deadline = time.monotonic() + 120  # every slot (2 running + 1 ahead) is held by a bronze request
        while (await scheduler.view.remote()).stats.counters["bronze"].dispatched < 3:
            assert time.monotonic() < deadline, "the bronze requests were never all granted"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # vLLM's statistics count the third one waiting
        gold = await _stream(base_url, "sk-test-gold", t0, "capital of France?", 20, 8)
        return gold, await asyncio.gather(*blockers)

    gold, blockers = asyncio.run(scenario())
    assert [u.completion_tokens for u in gold[0]] == [8]
    for usages, finishes, _ in blockers:
        assert len(usages) == 1 and len(finishes) == 1  # one stream: one usage, one finish
        assert usages[0].completion_tokens == LONG
        assert usages[0].prompt_tokens == len(tokenizer_of.encode(prompt))
    stats = ray.get(scheduler.view.remote()).stats
    assert stats.counters["bronze"].preempted >= 1 and stats.counters["bronze"].revoked >= 1
    assert gold[2] < min(done for *_, done in blockers)


@pytest.fixture(scope="module")
def tokenizer_of(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))
