"""Cache-aware placement in the live service: prompt hashes and the session header at the ingress, the
engines' cached tokens in usage, /v1/usage and /metrics, and placement on the real Serve app.

The first tests are plain units (no Ray); the last run the real Serve app on 127.0.0.1 with the OpenAI
SDK as the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import random
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import DEMO_KEYS, METRICS_HEADERS, app_args, metric_samples
from factories import make_scheduler, make_ticket
from test_gateway_pump import FakeLLM, FakeScheduler, tok

from deployments.engine import GenerationRequest, PrefixCacheCounters, TokenDelta, Usage
from deployments.replica_config import ReplicaConfig, build_engine
from deployments.scheduler_actor import Release, Resumption, SchedulerActor, Submission
from deployments.sim_engine import SimulatedEngine
from deployments.telemetry import Outcome, RequestBook, RequestTimings
from deployments.usage import tenant_usage
from driftsched.core.config import TenantConfig, parse_core_config
from driftsched.core.intake import Intake
from driftsched.core.placement import Capacity
from driftsched.core.prefix import chain_hashes, common_prefix
from serve_app.config import GatewayConfig, parse_app_config
from serve_app.gateway import Gateway, Sampling
from serve_app.metrics import render
from serve_app.prompts import ApproxPrompts, RenderedPrompt, TokenizerPrompts
from serve_app.protocol import MAX_SESSION_ID_CHARS, SESSION_HEADER, HeaderError, session_id, usage_dict

BLOCK = 16  # tokens per prefix block in these units: small prompts span several blocks
GOLD = {tenant: key for key, tenant in DEMO_KEYS.items()}["gold"]
SYSTEM = "You are the support assistant of a bank. Answer in two sentences, cite the policy. " * 3


# ---------------------------------------------------------------- the session header


def test_the_session_header_is_optional_and_stripped() -> None:
    assert session_id({}) is None
    assert session_id({SESSION_HEADER: "  chat-42 "}) == "chat-42"
    assert session_id({SESSION_HEADER: "x" * MAX_SESSION_ID_CHARS}) == "x" * MAX_SESSION_ID_CHARS


@pytest.mark.parametrize("bad", ["", "   ", "x" * (MAX_SESSION_ID_CHARS + 1), "caf\u00e9", "a\tb", "a\x00b"])
def test_a_bad_session_header_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(HeaderError, match=SESSION_HEADER) as info:
        session_id({SESSION_HEADER: bad})
    assert info.value.header == SESSION_HEADER


# ---------------------------------------------------------------- prompt hashes at the ingress


def test_transcripts_of_one_conversation_share_leading_blocks_and_part_after_the_first_difference() -> None:
    prompts = ApproxPrompts(BLOCK)
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Can I close my account?"}]
    turn2 = [*turn1, {"role": "assistant", "content": "Yes, at a branch."},
             {"role": "user", "content": "Online?"}]
    other = [{"role": "system", "content": SYSTEM.replace("bank", "shop")}, *turn1[1:]]
    first, second, third = prompts.chat(turn1), prompts.chat(turn2), prompts.chat(other)
    assert len(first.prefix_blocks) == len(first.text) // (BLOCK * 4) > 2
    assert second.prefix_blocks[:len(first.prefix_blocks)] == first.prefix_blocks  # the whole first turn
    assert len(second.prefix_blocks) > len(first.prefix_blocks)
    differs_at = next(i for i, (a, b) in enumerate(zip(first.text, third.text, strict=False)) if a != b)
    assert common_prefix(first.prefix_blocks, third.prefix_blocks) == differs_at // (BLOCK * 4)
    short = prompts.completion("hello")  # no whole block: nothing to place by
    assert short.prefix_blocks == () and short.num_tokens == 2


class WordTokenizer:
    """One token id per word, and a chat template that joins "role: content" lines."""

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return ([1] if add_special_tokens else []) + [hash(w) % 50_000 + 2 for w in text.split()]

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> object:
        return "".join(f"{m['role']}: {m['content']}\n" for m in conversation) + "assistant:"


def test_tokenizer_prompts_hash_the_token_ids_the_engine_runs() -> None:
    prompts = TokenizerPrompts(WordTokenizer(), BLOCK)
    done = prompts.completion(SYSTEM + "first question")
    assert done.token_ids is not None and done.num_tokens == len(done.token_ids)
    assert done.prefix_blocks == chain_hashes(done.token_ids, BLOCK)
    assert len(done.prefix_blocks) == done.num_tokens // BLOCK
    again = prompts.completion(SYSTEM + "another question entirely")
    shared_tokens = 1 + len(SYSTEM.split())  # BOS and the system words
    assert common_prefix(done.prefix_blocks, again.prefix_blocks) == shared_tokens // BLOCK


def _prepare(tenant: str, prompt: RenderedPrompt, session: str | None) -> Any:
    intake = Intake(parse_core_config({"tenants": [{"name": "a"}, {"name": "b"}]}))

    async def scenario() -> Any:
        gateway = Gateway(intake, GatewayConfig(), FakeScheduler(), FakeLLM({}), benchmark_mode=False)
        return gateway.prepare(tenant, prompt, 20, 20, Sampling(), None, session=session)

    return asyncio.run(scenario())


def test_the_ticket_carries_the_hashes_and_a_session_scoped_to_its_tenant() -> None:
    prompt = ApproxPrompts(BLOCK).completion(SYSTEM)
    a, b = _prepare("a", prompt, "s1"), _prepare("b", prompt, "s1")
    assert a.ticket.prefix_blocks == prompt.prefix_blocks != ()
    assert a.ticket.session_id == "a/s1" and b.ticket.session_id == "b/s1"  # two tenants' "s1": two sessions
    assert _prepare("a", prompt, None).ticket.session_id is None
    assert not any("bank" in str(v) for v in dataclasses.asdict(a.ticket).values())  # hashes, not the prompt


# ---------------------------------------------------------------- cached tokens in usage


def test_usage_reports_cached_tokens_the_openai_way() -> None:
    assert usage_dict(Usage(100, 5, 64))["prompt_tokens_details"] == {"cached_tokens": 64}
    assert "prompt_tokens_details" not in usage_dict(Usage(100, 5))  # the engine did not say


def test_a_resumed_request_reports_the_cached_part_of_its_own_prompt() -> None:
    from test_gateway_pump import run_pump

    # preempted after 2 tokens; the resumed run's prompt is the 4-token prompt + 2, all of it cached
    llm = FakeLLM({"r0": [[tok("a"), tok("b"), TokenDelta("", 0, "preempted")]],
                   "r1": [[tok("c", "length", Usage(6, 1, 6))]]})
    items = run_pump(FakeScheduler(grants=["r1"]), llm)
    final = items[-2]
    assert isinstance(final, TokenDelta) and final.usage == Usage(4, 3, 4)


# ---------------------------------------------------------------- the request book, /v1/usage, /metrics


def _timings(tenant: str, prompt: int, cached: int | None, outcome: Outcome = Outcome.OK) -> RequestTimings:
    return RequestTimings(tenant, prompt_tokens=prompt, cached_tokens=cached, outcome=outcome,
                          output_tokens=3)


def test_the_book_counts_completed_requests_cache_hits_per_tenant_and_replica() -> None:
    book = RequestBook()
    book.record(_timings("a", 100, 60), "r0")
    book.record(_timings("a", 50, 0), "r1")
    book.record(_timings("a", 40, 40, Outcome.REPLICA_ERROR), "r1")  # not completed: not counted
    book.record(_timings("a", 30, None), "r1")  # the engine did not say
    book.record(_timings("b", 10, 10), "r0")
    assert (book.prefix["a"].query_tokens, book.prefix["a"].hit_tokens) == (150, 60)
    assert book.prefix["a"].hit_rate == pytest.approx(0.4)
    assert {k: (t.query_tokens, t.hit_tokens) for k, t in book.replica_prefix.items()} == {
        ("r0", "a"): (100, 60), ("r1", "a"): (50, 0), ("r0", "b"): (10, 10)}
    book.forget_replica("r0")
    assert set(book.replica_prefix) == {("r1", "a")}
    assert book.prefix["b"].hit_tokens == 10  # the tenant's total stays


def test_usage_and_metrics_show_the_prefix_cache() -> None:
    core, _ = make_scheduler("fifo", TenantConfig(name="a"), TenantConfig(name="b"))
    book = RequestBook()
    book.record(_timings("a", 200, 150), "r0")
    book.record(_timings("a", 200, 0), "r1")
    body = tenant_usage(core, book, "a").to_json()
    assert body["prefix_cache"] == {"hit_rate": 0.375, "cached_prompt_tokens": 150, "prompt_tokens": 400}
    assert tenant_usage(core, book, "b").to_json()["prefix_cache"]["hit_rate"] is None

    async def scenario() -> Any:
        actor = SchedulerActor({"tenants": [{"name": "a"}], "scheduler": {"policy": "fifo"}})
        await actor.report("r0", Capacity(1, 1, 10_000, (), 10_000), PrefixCacheCounters(900, 300))
        await actor.report("r1", Capacity(1, 1, 10_000, (), 10_000))  # an older replica: no counters
        await actor.release_many([Release("q1", "r0", 3, _timings("a", 200, 150))])
        return await actor.view()

    text = render(asyncio.run(scenario()), [], {}).decode()
    assert 'driftsched_prefix_cache_query_tokens_total{replica="r0",tenant="a"} 200.0' in text
    assert 'driftsched_prefix_cache_hit_tokens_total{replica="r0",tenant="a"} 150.0' in text
    assert 'driftsched_replica_prefix_cache_query_tokens_total{replica="r0"} 900.0' in text
    assert 'driftsched_replica_prefix_cache_hit_tokens_total{replica="r0"} 300.0' in text
    assert 'replica="r1"' not in text.split("driftsched_replica_prefix_cache_query_tokens")[1]


def test_a_replica_the_scheduler_drops_takes_its_prefix_figures_with_it() -> None:
    async def scenario() -> tuple[Any, Any]:
        actor = SchedulerActor({"tenants": [{"name": "a"}], "scheduler": {"policy": "fifo"}})
        await actor.report("r0", Capacity(1, 1, 10_000, (), 10_000), PrefixCacheCounters(10, 5))
        await actor.release_many([Release("q1", "r0", 3, _timings("a", 20, 10))])
        before = await actor.view()
        stopped = Resumption("r0", 1, 1, replica_failed=True)
        await actor.submit("c", [Submission(make_ticket(9), 0.05, stopped)])
        return before, await actor.view()

    before, after = asyncio.run(scenario())
    assert set(before.engine_prefix) == {"r0"} and set(before.prefix) == {("r0", "a")}
    assert after.engine_prefix == {} and after.prefix == {}


# ---------------------------------------------------------------- the simulated engine's cache


async def _served(engine: Any, prompt: str, rid: str) -> Usage | None:
    """Run one request to its end on `engine`; its final usage."""
    usage = None
    async for delta in engine.generate(GenerationRequest(rid, prompt, len(prompt) // 4, 4, "chat",
                                                         target_tokens=4)):
        usage = delta.usage or usage
    return usage


def test_the_simulated_engine_reuses_a_prompt_prefix_it_served() -> None:
    config = ReplicaConfig(time_scale=0.01, model="qwen3-0.6b-bf16")

    async def scenario() -> tuple[list[Usage | None], PrefixCacheCounters]:
        uncached = config.model_copy(update={"prefix_caching": False})
        engine, off = build_engine(config, BLOCK), build_engine(uncached, BLOCK)
        assert isinstance(engine, SimulatedEngine)
        await engine.start()
        await off.start()
        try:
            usages = [await _served(engine, SYSTEM + "first question", "q1"),
                      await _served(engine, SYSTEM + "second question", "q2"),
                      await _served(off, SYSTEM, "q3"), await _served(off, SYSTEM, "q4")]
            return usages, engine.prefix_cache()
        finally:
            await engine.stop()
            await off.stop()

    (first, second, _, uncached), counters = asyncio.run(scenario())
    shared_blocks = len(SYSTEM) // (BLOCK * 4)
    assert first is not None and first.cached_tokens == 0
    assert second is not None and second.cached_tokens == shared_blocks * BLOCK > 0
    assert counters == PrefixCacheCounters(first.prompt_tokens + second.prompt_tokens, second.cached_tokens)
    assert uncached is not None and uncached.cached_tokens is None  # caching off: the engine does not say


# ---------------------------------------------------------------- when a replica reports


def test_a_first_token_brings_the_next_report_forward_but_not_before_the_gap() -> None:
    from deployments.replica import ReportPacer

    async def waited(pacer: ReportPacer, token_after_s: float | None) -> float:
        pacer.reporting()
        if token_after_s is not None:
            asyncio.get_running_loop().call_later(token_after_s, pacer.first_token)
        started = time.monotonic()
        await pacer.wait()
        return time.monotonic() - started

    async def scenario() -> list[float]:
        pacer = ReportPacer(heartbeat_s=0.6, min_gap_s=0.1)
        return [await waited(pacer, None), await waited(pacer, 0.2), await waited(pacer, 0.0)]

    idle, soon, at_once = asyncio.run(scenario())
    assert 0.6 <= idle < 0.75  # nothing started: the heartbeat
    assert 0.2 <= soon < 0.35  # a first token 0.2 s in: reported then
    assert 0.1 <= at_once < 0.25  # a first token at once: reported after the gap, not sooner
    assert ReportPacer(0.5).min_gap_s == 0.125


# ---------------------------------------------------------------- configuration


def test_a_prefix_block_must_be_whole_vllm_kv_blocks() -> None:
    from driftsched.core.errors import ConfigError

    vllm = {"engine": "vllm", "model": "m", "served_model_name": "m",
            "engine_args": {"max_model_len": 4096, "block_size": 32}}
    assert parse_app_config(app_args(replicas=vllm, **{"core.scheduler.placement": {"block_tokens": 64}}))
    with pytest.raises(ConfigError, match=r"engine_args.block_size \(32\).*set it to 64"):
        parse_app_config(app_args(replicas=vllm, **{"core.scheduler.placement": {"block_tokens": 48}}))
    with pytest.raises(ValueError, match="contradicts prefix_caching"):
        ReplicaConfig(engine="vllm", model="m", prefix_caching=False,
                      engine_args={"enable_prefix_caching": True})
    assert ReplicaConfig(engine="vllm", model="m", engine_args={"enable_prefix_caching": True}).prefix_caching


# ---------------------------------------------------------------- the real Serve app (slow)

LIVE_BLOCK = 32  # tokens per prefix block in the live app: 128 characters of a simulated prompt
SESSIONS, TURNS = 16, 4


def _conversation(base_url: str, session: int) -> list[tuple[str, int, int]]:
    """One multi-turn chat: each turn sends every earlier message and the answers back, after a think
    time (so the sessions do not move in lockstep); returns (replica, prompt tokens, cached tokens) per
    turn."""
    client = openai.OpenAI(base_url=base_url, api_key=GOLD, max_retries=0, timeout=60)
    think = random.Random(session)
    time.sleep(0.05 * session)
    system = f"Session {session}: you are a patient tutor. " + " ".join(
        f"Rule {i}: explain step {i} of the method before step {i + 1}." for i in range(30))
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    seen = []
    for turn in range(TURNS):
        time.sleep(think.uniform(0.0, 0.3))
        messages.append({"role": "user", "content": f"Question {turn} of session {session}: " + "why? " * 40})
        raw = client.chat.completions.with_raw_response.create(
            model="driftsched-sim", messages=messages, max_tokens=64,
            extra_body={"driftsched_target_tokens": 48}, extra_headers={"x-session-id": f"s{session}"})
        done = raw.parse()
        details = done.usage.prompt_tokens_details
        assert details is not None and details.cached_tokens is not None
        seen.append((raw.headers["x-driftsched-replica"], done.usage.prompt_tokens, details.cached_tokens))
        messages.append({"role": "assistant", "content": done.choices[0].message.content or ""})
    return seen


def _usage_after(root: str, prompt_tokens: int) -> dict[str, Any]:
    """gold's /v1/usage once every request's release reached the scheduler (releases are batched)."""
    deadline, body = time.monotonic() + 10, {}
    while time.monotonic() < deadline:
        body = httpx.get(root + "/v1/usage", headers={"Authorization": f"Bearer {GOLD}"}, timeout=10).json()
        if body["prefix_cache"]["prompt_tokens"] >= prompt_tokens:
            break
        time.sleep(0.2)
    return body


@pytest.mark.slow
def test_cache_aware_placement_finds_more_of_each_conversation_cached(serve_cluster: Any) -> None:
    """The same conversations, run concurrently against the app placing by `most-free-kv` and by
    `driftsched`: the engines report a higher prefix-cache hit rate under `driftsched`, which keeps a
    conversation on the replica that holds its earlier turns."""
    hit_rate: dict[str, float] = {}
    placed: dict[str, list[list[str]]] = {}
    for rule in ("most-free-kv", "driftsched"):
        args = app_args(benchmark_mode=True, **{
            "core.scheduler.placement": {"rule": rule, "block_tokens": LIVE_BLOCK},
            "replicas.max_num_seqs": SESSIONS // 2, "replicas.time_scale": 0.1, "replicas.heartbeat_s": 0.05})
        base_url = serve_cluster.deploy(args)
        with concurrent.futures.ThreadPoolExecutor(SESSIONS) as pool:
            turns = list(pool.map(_conversation, [base_url] * SESSIONS, range(SESSIONS)))
        prompt = sum(p for conversation in turns for _, p, _ in conversation)
        cached = sum(c for conversation in turns for _, _, c in conversation)
        hit_rate[rule] = cached / prompt
        print(f"{rule}: hit rate {cached / prompt:.3f} of {prompt} prompt tokens")
        placed[rule] = [[r for r, _, _ in conversation] for conversation in turns]
        usage = _usage_after(base_url.removesuffix("/v1"), prompt)["prefix_cache"]
        assert (usage["prompt_tokens"], usage["cached_prompt_tokens"]) == (prompt, cached)  # the book agrees
        assert all(c == 0 for conversation in turns for _, _, c in conversation[:1])  # first turns: cold
    # a conversation's earlier turns make up most of each later prompt: kept on one replica, they are found
    stays = sum(len(set(replicas)) == 1 for replicas in placed["driftsched"])
    print(f"conversations kept on one replica: {stays} of {SESSIONS}")
    # most-free-kv keeps a conversation where it was only by chance (about one turn in two here)
    assert hit_rate["driftsched"] >= hit_rate["most-free-kv"] + 0.08, (hit_rate, placed)
    assert hit_rate["driftsched"] > 0.5 and stays >= SESSIONS // 2, (hit_rate, placed)


@pytest.mark.slow
def test_a_bad_session_header_is_an_openai_error_and_metrics_show_the_cache(serve_cluster: Any) -> None:
    args = app_args(benchmark_mode=True, **{"core.scheduler.placement": {"block_tokens": LIVE_BLOCK}})
    base_url = serve_cluster.deploy(args)
    client = openai.OpenAI(base_url=base_url, api_key=GOLD, max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="driftsched-sim", prompt="hello", max_tokens=4,
                                  extra_headers={SESSION_HEADER: "x" * (MAX_SESSION_ID_CHARS + 1)})
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == SESSION_HEADER
    assert error["type"] == "invalid_request_error" and SESSION_HEADER in error["message"]
    prompt = SYSTEM * 4
    for _ in range(2):
        done = client.completions.create(model="driftsched-sim", prompt=prompt, max_tokens=4,
                                         extra_body={"driftsched_target_tokens": 4},
                                         extra_headers={SESSION_HEADER: "same"})
    assert done.usage.prompt_tokens_details.cached_tokens > 0
    cached = done.usage.prompt_tokens_details.cached_tokens
    root, deadline = base_url.removesuffix("/v1"), time.monotonic() + 10
    while True:  # the release and the next heartbeat bring the figures to the scheduler
        text = httpx.get(root + "/metrics", headers=METRICS_HEADERS, timeout=10).text
        book = _total(text, "driftsched_prefix_cache_hit_tokens_total", 'tenant="gold"')
        engine = _total(text, "driftsched_replica_prefix_cache_hit_tokens_total")
        if (book >= cached and engine >= cached) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert book >= cached and engine >= cached, text[-3000:]
    queried = _total(text, "driftsched_prefix_cache_query_tokens_total", 'tenant="gold"')
    assert queried >= 2 * done.usage.prompt_tokens


def _total(metrics: str, name: str, having: str = "") -> float:
    """The sum of `name`'s samples in a /metrics text whose labels contain `having`."""
    return sum(metric_samples(metrics, name, having))
