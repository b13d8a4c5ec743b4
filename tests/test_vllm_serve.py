"""Real vLLM (CPU build) inside the real Serve app: two replicas, a tiny local model, the OpenAI SDK.

One app per module (vLLM start-up is the slow part): it replaces the simulated app in the session's
Serve instance and is deleted at the end of the module.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import time

import httpx
import openai
import pytest
import ray
from conftest import METRICS_HEADERS, app_args, scheduler_handle, vllm_replicas

# find_spec, not importorskip: collecting this module (for a fast run too) must not import vLLM.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]

MODEL = "tiny-llama"
SLOTS = 4


@pytest.fixture(scope="module")
def vllm_app(serve_cluster, tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-work")
    args = app_args(benchmark_mode=True, **{
        "core.scheduler.max_request_tokens": 512,
        "replicas": vllm_replicas(tiny_model_dir, work, served_model_name=MODEL, max_num_seqs=SLOTS),
        "gateway.stall_timeout_s": 60,
        "gateway.queue_timeout_s": 60,
    })
    base_url = serve_cluster.deploy(args)
    yield args, base_url
    from ray import serve

    serve.delete("driftsched")


@pytest.fixture(scope="module")
def client(vllm_app):
    return openai.OpenAI(base_url=vllm_app[1], api_key="sk-test-gold", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_completion_usage_matches_the_tokenizer(client, tokenizer):
    prompt = "Summarize the queue and the tokens"
    done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=9, temperature=0.0)
    assert done.object == "text_completion"
    choice = done.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens == len(tokenizer.encode(prompt)) > 1  # BOS included
    assert 1 <= done.usage.completion_tokens <= 9
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    # benchmark mode fixes the length through min_tokens/ignore_eos
    fixed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30,
                                      extra_body={"driftsched_target_tokens": 12})
    assert (fixed.choices[0].finish_reason, fixed.usage.completion_tokens) == ("length", 12)
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, seed=7, top_p=0.9,
                                      extra_body={"driftsched_target_tokens": 12})
    same = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, seed=7, top_p=0.9,
                                     extra_body={"driftsched_target_tokens": 12})
    assert again.choices[0].text == same.choices[0].text  # seeded sampling is reproducible


def test_chat_uses_the_chat_template(client, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                          extra_body={"driftsched_target_tokens": 8})
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert chat.usage.completion_tokens == 8


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_with_usage(client, chat):
    kwargs = {"model": MODEL, "max_tokens": 40, "stream": True, "stream_options": {"include_usage": True},
              "extra_body": {"driftsched_target_tokens": 25}}
    if chat:
        stream = client.chat.completions.create(messages=[{"role": "user", "content": "tell me"}], **kwargs)
    else:
        stream = client.completions.create(prompt="tell me", **kwargs)
    pieces, finish, usage = 0, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces += 1
            finish = choice.finish_reason or finish
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 25
    assert pieces >= 2  # really streamed, not one final blob


def test_stop_sequence_ends_with_stop(client):
    first = client.completions.create(model=MODEL, prompt="the scheduler", max_tokens=24, temperature=0,
                                      extra_body={"driftsched_target_tokens": 24})
    text = first.choices[0].text
    stop = text.strip()[:2]
    if not stop:
        pytest.skip("the random model produced only whitespace")
    again = client.completions.create(model=MODEL, prompt="the scheduler", max_tokens=24, temperature=0,
                                      stop=[stop])
    assert again.choices[0].finish_reason == "stop"
    assert stop not in again.choices[0].text


def test_engine_errors_are_clear_http_errors(vllm_app):
    _, base_url = vllm_app
    headers = {"authorization": "Bearer sk-test-gold"}
    too_long = " ".join(["tokens"] * 700)  # > max_request_tokens: refused at admission
    resp = httpx.post(f"{base_url}/completions", headers=headers, timeout=30,
                      json={"model": MODEL, "prompt": too_long, "max_tokens": 4})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    bad_chat = httpx.post(f"{base_url}/chat/completions", headers=headers, timeout=30,
                          json={"model": MODEL, "messages": [{"role": "user", "content": 3}]})
    assert bad_chat.status_code == 400


def _replicas(args) -> dict[str, dict[str, float]]:
    return ray.get(scheduler_handle(args).view.remote()).replicas


def test_cancel_aborts_inside_vllm(vllm_app):
    args, base_url = vllm_app
    body = {"model": MODEL, "prompt": "write a long report", "max_tokens": 400, "stream": True,
            "driftsched_target_tokens": 400}
    with httpx.stream("POST", f"{base_url}/completions", json=body, timeout=60,
                      headers={"authorization": "Bearer sk-test-gold"}) as resp:
        assert resp.status_code == 200
        replica = resp.headers["x-driftsched-replica"]
        lines = 0
        for line in resp.iter_lines():
            lines += bool(line.startswith("data: "))
            if lines >= 3:
                break  # leave with most of the 400 tokens still to generate
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = _replicas(args).get(replica, {})
        if state and state["in_use"] == 0 and state["engine_running"] == 0:
            break
        time.sleep(0.2)
    state = _replicas(args)[replica]
    assert (state["in_use"], state["engine_running"], state["engine_waiting"]) == (0, 0, 0), state
    metrics = httpx.get(f"{base_url.removesuffix('/v1')}/metrics", headers=METRICS_HEADERS, timeout=10).text
    assert 'driftsched_request_outcomes_total{outcome="client_disconnect",tenant="gold"}' in metrics


def test_two_replicas_serve_and_drift_reaches_shared_stats(vllm_app, client):
    base_url = vllm_app[1]

    def one(i: int) -> str:
        raw = client.completions.with_raw_response.create(
            model=MODEL, prompt=f"answer the question {i}", max_tokens=64,
            extra_body={"driftsched_target_tokens": 48})
        assert raw.parse().usage.completion_tokens == 48
        return raw.headers["x-driftsched-replica"]

    with concurrent.futures.ThreadPoolExecutor(2 * SLOTS) as pool:
        served = list(pool.map(one, range(2 * SLOTS)))
    assert len(set(served)) == 2, served
    deadline = time.monotonic() + 15
    metrics = ""
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{base_url.removesuffix('/v1')}/metrics", headers=METRICS_HEADERS,
                            timeout=10).text
        counts = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith('driftsched_estimate_observations{') and 'tenant="gold"' in line]
        if sum(counts) >= 2 * SLOTS:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"drift observations did not reach the shared statistics:\n{metrics[-2000:]}")
    assert "driftsched_engine_queue_seconds_count" in metrics
    assert "driftsched_replica_kv_cache_usage_ratio" in metrics


def _sample(name: str, labels: str, metrics: str) -> float:
    """The value of `name{labels}` in a /metrics text (0 where absent)."""
    prefix = f"{name}{{{labels}}} "
    return sum(float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix))


def test_a_second_turn_on_the_same_replica_reports_its_first_turn_cached(vllm_app, client, tokenizer):
    """vLLM's prefix caching, seen through DriftSched: the second turn of a conversation goes where the
    first ran (cache-aware placement) and its usage reports the first turn's prompt as cached; the
    engine's own counters and the request book count the hit."""
    base_url = vllm_app[1]
    words, n = ["the", "scheduler", "admits", "requests", "from", "many", "tenants"], 40
    system = ""
    while len(tokenizer.encode(system)) < 300:  # > 2 of vLLM's 128-token CPU blocks, < the 512 context
        system = " ".join(f"{words[i % len(words)]} {i}" for i in range(n))
        n += 10
    turn = [{"role": "system", "content": system}, {"role": "user", "content": "first question"}]
    options = {"model": MODEL, "max_tokens": 8, "extra_body": {"driftsched_target_tokens": 8},
               "extra_headers": {"x-session-id": "conversation-1"}}
    first = client.chat.completions.with_raw_response.create(messages=turn, **options)
    answer = first.parse().choices[0].message.content
    turn += [{"role": "assistant", "content": answer}, {"role": "user", "content": "second question"}]
    second = client.chat.completions.with_raw_response.create(messages=turn, **options)
    replica = first.headers["x-driftsched-replica"]
    assert second.headers["x-driftsched-replica"] == replica
    first_usage, second_usage = first.parse().usage, second.parse().usage
    cached = second_usage.prompt_tokens_details.cached_tokens
    assert first_usage.prompt_tokens - 128 <= cached < second_usage.prompt_tokens, (first_usage, second_usage)
    assert first_usage.prompt_tokens_details.cached_tokens < cached
    deadline, metrics = time.monotonic() + 10, ""
    while time.monotonic() < deadline:  # the engine's counters arrive with the next heartbeat
        metrics = httpx.get(f"{base_url.removesuffix('/v1')}/metrics", headers=METRICS_HEADERS,
                            timeout=10).text
        engine_hits = _sample("driftsched_replica_prefix_cache_hit_tokens_total", f'replica="{replica}"',
                              metrics)
        if engine_hits >= cached:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the engine's prefix-cache hits never reached /metrics:\n{metrics[-3000:]}")
    book = _sample("driftsched_prefix_cache_hit_tokens_total", f'replica="{replica}",tenant="gold"', metrics)
    assert book >= cached
