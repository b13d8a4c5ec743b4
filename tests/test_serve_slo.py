"""Latency objectives on the live surfaces: asked for on the request, judged at the gateway, reported.

Units first (no Ray): the judging arithmetic on hand-made timings, the usage report's shares and
goodput, the objective headers and `service_tier`, the gateway turning asks into a ticket's objectives
and reporting them on the release, and the /metrics families. Then, marked slow, the real Serve app on
127.0.0.1: the OpenAI SDK sees the objectives it asked for in the response headers, a bad ask is a 400
naming the header or field, and /v1/usage and /metrics count attainment; and vLLM's own benchmark client
(`vllm bench serve --goodput`, through benchmarks/bench_goodput.py) agrees with /v1/usage on the same run.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import DEMO_KEYS, METRICS_HEADERS, app_args, metric_samples
from factories import make_scheduler, make_ticket
from pydantic import ValidationError

from deployments.engine import TokenDelta, Usage
from deployments.scheduler_actor import Release
from deployments.telemetry import Outcome, RequestBook, RequestTimings, SloTally, judge, shed_count
from deployments.usage import tenant_usage
from driftsched.core.config import TenantConfig, parse_core_config
from driftsched.core.intake import Intake
from driftsched.core.slo import Objectives
from serve_app.config import GatewayConfig
from serve_app.errors import ErrorCode, GatewayError
from serve_app.gateway import Asks, Gateway, ParamError, Sampling
from serve_app.metrics import render
from serve_app.prompts import RenderedPrompt
from serve_app.protocol import TPOT_HEADER, TTFT_HEADER, ChatBody, HeaderError, objective_asks, tier_name

ROOT = Path(__file__).resolve().parents[1]
GOLD, BRONZE = ({t: k for k, t in DEMO_KEYS.items()}[name] for name in ("gold", "bronze"))
MODEL = "driftsched-sim"


def timings(ttft: float | None = 0.5, e2e: float | None = 2.5, tokens: int = 21, outcome: str = "ok",
            ttft_slo: float | None = 1.0, tpot_slo: float | None = 0.1, **more: Any) -> RequestTimings:
    return RequestTimings("a", ttft_s=ttft, e2e_s=e2e, output_tokens=tokens, outcome=Outcome(outcome),
                          ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, **more)


# ---------------------------------------------------------------- judging


def test_ttft_and_tpot_are_judged_as_the_plan_defines_them() -> None:
    # TPOT = (2.5 - 0.5) / 20 = 0.1: met exactly at the objective
    assert judge(timings()) == (True, True)
    assert judge(timings(ttft=1.2, e2e=3.2)) == (False, True)  # late first token, same pace
    assert judge(timings(e2e=2.6)) == (True, False)  # 0.105 s per token
    # one output token: TPOT follows TTFT
    assert judge(timings(ttft=0.3, e2e=0.3, tokens=1)) == (True, True)
    assert judge(timings(ttft=1.3, e2e=1.3, tokens=1)) == (False, False)


def test_only_completed_requests_meet_an_objective_and_abandoned_ones_are_not_judged() -> None:
    for outcome in ("timeout", "replica_error", "engine_error", "resume_failed"):
        assert judge(timings(outcome=outcome)) == (False, False), outcome
    assert judge(timings(ttft=None, e2e=None, tokens=0, outcome="timeout")) == (False, False)
    assert judge(timings(outcome="client_disconnect")) is None
    assert judge(timings(ttft_slo=None, tpot_slo=None)) is None  # no objectives: nothing to judge


def test_only_refusals_the_tenant_did_not_cause_count_as_misses() -> None:
    rejected = {"tenant_request_quota": 5, "tenant_token_quota": 1, "tenant_queue_full": 2,
                "system_overloaded": 3, "slo_infeasible": 4}
    assert shed_count(rejected) == 7


def test_the_usage_report_gives_shares_goodput_and_the_objectives() -> None:
    tenant = TenantConfig(name="a", tier=1, best_tier=0, ttft_slo_s=2.0)
    core, _ = make_scheduler("fifo", tenant, TenantConfig(name="b"), scheduler={"max_queued_total": 1})
    assert core.admit(make_ticket(1, "a")).admitted
    assert not core.admit(make_ticket(2, "a")).admitted  # system_overloaded: a miss
    book = RequestBook()
    t0 = 1_000.0
    book.record(timings(ttft_slo=2.0, arrival_s=t0, ended_s=t0 + 2.5))  # met both, 21 tokens
    book.record(timings(ttft=2.5, e2e=4.5, ttft_slo=2.0, arrival_s=t0 + 1, ended_s=t0 + 5.5))  # late
    book.record(timings(e2e=4.5, ttft_slo=2.0, arrival_s=t0 + 2, ended_s=t0 + 6.5))  # slow stream
    book.record(timings(ttft=None, e2e=None, tokens=0, outcome="timeout", ttft_slo=2.0,
                        arrival_s=t0 + 3, ended_s=t0 + 10.0))
    book.record(timings(outcome="client_disconnect", arrival_s=t0 - 50, ended_s=t0 + 99))  # not judged
    body = tenant_usage(core, book, "a").to_json()  # type: ignore[union-attr]
    slo, goodput = body["slo"], body["goodput"]
    assert slo["objectives"] == {"ttft_s": 2.0, "tpot_s": 0.1, "e2e_s": None}
    assert slo["strictest"] == {"ttft_s": 1.5, "tpot_s": 0.1}  # tier 0's TTFT: its best tier
    assert slo["judged"] == 5  # four judged runs and the overload refusal
    assert (slo["ttft"], slo["tpot"], slo["both"]) == (0.4, 0.4, 0.2)
    assert (slo["shed"], slo["expired"]) == (0.2, 0.2)
    assert goodput == {"requests": 1, "tokens": 21, "window_s": 10.0, "requests_per_s": 0.1,
                       "tokens_per_s": 2.1}
    nothing = tenant_usage(core, book, "b").to_json()  # type: ignore[union-attr]
    assert nothing["slo"]["judged"] == 0 and nothing["slo"]["both"] is None
    assert nothing["goodput"]["requests_per_s"] is None


# ---------------------------------------------------------------- asking for objectives


def test_objective_headers_parse_to_seconds_and_bad_values_name_the_header() -> None:
    assert objective_asks({}) == (None, None)
    assert objective_asks({TTFT_HEADER: " 800 ", TPOT_HEADER: "50.5"}) == (0.8, 0.0505)
    for bad in ("abc", "0", "-5", "nan", "inf", ""):
        with pytest.raises(HeaderError, match="positive number of milliseconds") as info:
            objective_asks({TPOT_HEADER: bad})
        assert info.value.header == TPOT_HEADER


def test_service_tier_takes_openais_values_only() -> None:
    messages = [{"role": "user", "content": "hi"}]
    for tier in ("auto", "default", "flex", "priority"):
        assert ChatBody.model_validate({"messages": messages, "service_tier": tier}).service_tier == tier
    with pytest.raises(ValidationError, match="'scale' is not a service tier; use one of auto"):
        ChatBody.model_validate({"messages": messages, "service_tier": "scale"})
    assert [tier_name(t, 1) for t in (0, 1, 2)] == ["priority", "default", "flex"]


@dataclass
class _Recorder:
    """A scheduler handle whose `release_many` keeps what it was sent."""

    releases: list[Release] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.release_many = type("M", (), {"remote": self._release})()

    def _release(self, items: list[Release]) -> Any:
        self.releases += items
        return asyncio.sleep(0)


class _OneRun:
    """An LLM handle whose every run streams `deltas`, one every `gap_s`."""

    def __init__(self, deltas: list[TokenDelta], gap_s: float) -> None:
        self.deltas, self.gap_s = deltas, gap_s

    def options(self, stream: bool) -> _OneRun:
        return self

    @property
    def generate(self) -> _OneRun:
        return self

    def remote(self, run: Any, target_replica: str) -> Any:
        return _Stream(self.deltas, self.gap_s)


class _Stream:
    """A replica stream as a streaming `DeploymentHandle` call returns one."""

    def __init__(self, deltas: list[TokenDelta], gap_s: float) -> None:
        self.deltas, self.gap_s = list(deltas), gap_s

    async def __anext__(self) -> TokenDelta:
        if not self.deltas:
            raise StopAsyncIteration
        await asyncio.sleep(self.gap_s)
        return self.deltas.pop(0)

    def cancel(self) -> None:
        pass


def _gateway(llm: Any = None, scheduler: Any = None) -> Gateway:
    intake = Intake(parse_core_config({"tenants": [
        {"name": "a", "tier": 1, "best_tier": 0},
        {"name": "b", "tier": 2, "ttft_slo_s": 20, "tpot_slo_s": 0.3},
    ]}))
    config = GatewayConfig(stall_timeout_s=5.0, start_timeout_s=5.0, queue_timeout_s=5.0)
    return Gateway(intake, config, scheduler or _Recorder(), llm, benchmark_mode=False)


def _prepare(gw: Gateway, tenant: str, asks: Asks) -> Any:
    return gw.prepare(tenant, RenderedPrompt("tell me a story", 4), 20, 20, Sampling(), None, None, asks)


def test_asks_become_the_tickets_tier_and_objectives() -> None:
    gw = _gateway()
    plain = _prepare(gw, "a", Asks()).ticket
    assert (plain.tier, plain.ttft_slo_s, plain.tpot_slo_s) == (1, 5.0, 0.1)
    best = _prepare(gw, "a", Asks("priority")).ticket
    assert (best.tier, best.ttft_slo_s) == (0, 1.5)
    flex = _prepare(gw, "b", Asks("flex")).ticket
    assert (flex.tier, flex.ttft_slo_s, flex.tpot_slo_s) == (3, 60.0, 0.5)  # tier 3's, not b's own
    strict = _prepare(gw, "a", Asks("default", ttft_s=2.0, tpot_s=0.5)).ticket
    assert (strict.ttft_slo_s, strict.tpot_slo_s) == (2.0, 0.1)  # a looser TPOT ask changes nothing


@pytest.mark.parametrize(("asks", "header", "floor"), [
    (Asks(ttft_s=0.2), TTFT_HEADER, "1500 ms"), (Asks(ttft_s=3.0, tpot_s=0.01), TPOT_HEADER, "100 ms")])
def test_an_ask_stricter_than_the_allowance_is_a_400_naming_its_header(asks: Asks, header: str,
                                                                        floor: str) -> None:
    with pytest.raises(ParamError) as info:
        _prepare(_gateway(), "a", asks)
    err = info.value
    assert (err.status, err.code, err.param) == (400, ErrorCode.INVALID_REQUEST, header)
    assert err.message.startswith(f"{header}: ") and f"at least {floor}" in err.message


def test_the_release_carries_the_objectives_and_the_measured_stream() -> None:
    deltas = [TokenDelta("w ", 1), TokenDelta("w ", 1), TokenDelta("w", 1, "stop", Usage(4, 3))]
    scheduler = _Recorder()
    gw = _gateway(_OneRun(deltas, gap_s=0.05), scheduler)

    async def scenario() -> list[Any]:
        prepared = _prepare(gw, "a", Asks(ttft_s=4.0))
        lease = gw.start(prepared, "r0", 0.0)
        items: list[Any] = []
        while not items or not (items[-1] is None or isinstance(items[-1], GatewayError)):
            items.append(await asyncio.wait_for(lease.next(), 5.0))
        await lease.task
        await asyncio.sleep(0.05)  # the batched release goes out
        return items

    items = asyncio.run(scenario())
    assert items[-1] is None and not any(isinstance(i, GatewayError) for i in items)
    (release,) = scheduler.releases
    t = release.timings
    assert t is not None and (t.ttft_slo_s, t.tpot_slo_s, t.outcome) == (4.0, 0.1, Outcome.OK)
    assert t.ttft_s is not None and t.e2e_s is not None and 0.04 < t.ttft_s < t.e2e_s
    # wall-clock stamps (for goodput per second) and monotonic durations agree to clock-read jitter
    assert t.arrival_s is not None and t.ended_s is not None
    assert t.ended_s - t.arrival_s == pytest.approx(t.e2e_s, abs=0.02)
    met = judge(t)
    assert met is not None and met[0]  # its first token came well within 4 s


# ---------------------------------------------------------------- /metrics


def test_metrics_expose_judged_met_goodput_and_the_objectives() -> None:
    core, _ = make_scheduler("fifo", TenantConfig(name="a"), TenantConfig(name="b"),
                             scheduler={"max_queued_total": 1})
    assert core.admit(make_ticket(1, "b")).admitted
    assert not core.admit(make_ticket(2, "b")).admitted
    tally = SloTally()
    tally.add(timings(), (True, True))
    tally.add(timings(), (True, False))

    @dataclass
    class View:  # a SchedulerView with the request book's tallies (`slo`)
        stats: Any
        replicas: dict[str, Any] = field(default_factory=dict)
        histograms: dict[Any, Any] = field(default_factory=dict)
        tokens: dict[str, int] = field(default_factory=dict)
        outcomes: dict[Any, int] = field(default_factory=dict)
        autoscale: Any = None
        slo: dict[str, SloTally] = field(default_factory=dict)

    objectives = {"a": Objectives(1.5, 0.1, 10.0), "b": Objectives(30.0, 0.2)}
    text = render(View(core.snapshot(), slo={"a": tally}), [], {}, objectives).decode()  # type: ignore[arg-type]
    for line in ('driftsched_slo_judged_requests_total{tenant="a"} 2.0',
                 'driftsched_slo_judged_requests_total{tenant="b"} 1.0',  # its overload refusal
                 'driftsched_slo_met_requests_total{objective="ttft",tenant="a"} 2.0',
                 'driftsched_slo_met_requests_total{objective="both",tenant="a"} 1.0',
                 'driftsched_slo_met_requests_total{objective="both",tenant="b"} 0.0',
                 'driftsched_goodput_tokens_total{tenant="a"} 21.0',
                 'driftsched_slo_objective_seconds{objective="ttft",tenant="a"} 1.5',
                 'driftsched_slo_objective_seconds{objective="e2e",tenant="a"} 10.0',
                 'driftsched_slo_objective_seconds{objective="tpot",tenant="b"} 0.2'):
        assert line in text, line
    assert "driftsched_slo_judged" not in render(None, [], {}, objectives).decode()  # scheduler down


# ---------------------------------------------------------------- the live app


LIVE_ARGS = app_args(benchmark_mode=True, **{
    "replicas.seed": 2404,  # its own scheduler actor: counters start at zero
    "replicas.time_scale": 0.05,
    "core.tenants": [
        {"name": "gold", "tier": 1, "best_tier": 0, "weight": 4.0, "tpot_slo_s": 0.2},
        {"name": "bronze", "tier": 2, "ttft_slo_s": 20.0, "tpot_slo_s": 0.3},
        {"name": "tiny", "tier": 1, "requests_per_minute": 2, "max_queued": 1},
    ],
})


def _usage(root: str, key: str, judged_at_least: int = 0) -> dict[str, Any]:
    """The tenant's usage once `judged_at_least` requests are judged (releases are fire-and-forget)."""
    deadline = time.monotonic() + 15
    while True:
        resp = httpx.get(root + "/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["slo"]["judged"] >= judged_at_least or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


@pytest.mark.slow
def test_the_sdk_sees_its_objectives_bad_asks_are_400_and_attainment_is_reported(serve_cluster: Any
                                                                                  ) -> None:
    base_url = serve_cluster.deploy(LIVE_ARGS)
    root = base_url.removesuffix("/v1")
    gold = openai.OpenAI(base_url=base_url, api_key=GOLD, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hello there"}]

    def chat(**kwargs: Any) -> Any:
        return gold.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=12, extra_body={"driftsched_target_tokens": 8},
            **kwargs)

    def targets(raw: Any) -> tuple[str, str, str]:
        h = raw.headers
        return h["x-driftsched-tier"], h["x-driftsched-ttft-target-ms"], h["x-driftsched-tpot-target-ms"]

    plain = chat()
    assert targets(plain) == ("1", "5000", "200") and plain.parse().service_tier == "default"
    priority = chat(service_tier="priority")
    assert targets(priority) == ("0", "1500", "100") and priority.parse().service_tier == "priority"
    flex = chat(service_tier="flex")
    assert targets(flex) == ("2", "30000", "200") and flex.parse().service_tier == "flex"
    asked = chat(extra_headers={TTFT_HEADER: "2500", TPOT_HEADER: "150"})
    assert targets(asked) == ("1", "2500", "150")
    streamed = gold.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True, service_tier="priority",
        extra_body={"driftsched_target_tokens": 8})
    assert targets(streamed) == ("0", "1500", "100")
    chunks = list(streamed.parse())
    assert chunks and all(c.service_tier == "priority" for c in chunks)
    bronze = openai.OpenAI(base_url=base_url, api_key=BRONZE, max_retries=0, timeout=30)
    own = bronze.completions.with_raw_response.create(model=MODEL, prompt="hi", max_tokens=5)
    assert targets(own) == ("2", "20000", "300")  # its own objectives over its tier's

    for kwargs, param, says in (
        ({"service_tier": "scale"}, "service_tier", "'scale' is not a service tier; use one of auto"),
        ({"extra_headers": {TTFT_HEADER: "soon"}}, TTFT_HEADER, "positive number of milliseconds"),
        ({"extra_headers": {TTFT_HEADER: "200"}}, TTFT_HEADER, "at least 1500 ms"),
        ({"extra_headers": {TPOT_HEADER: "-1"}}, TPOT_HEADER, "positive number of milliseconds"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            chat(**kwargs)
        error = info.value.response.json()["error"]
        assert error["param"] == param and says in error["message"], error
        assert error["type"] == "invalid_request_error"

    usage = _usage(root, GOLD, judged_at_least=5)
    slo = usage["slo"]
    assert slo["objectives"] == {"ttft_s": 5.0, "tpot_s": 0.2, "e2e_s": None}
    assert slo["strictest"] == {"ttft_s": 1.5, "tpot_s": 0.1}
    assert slo["judged"] == 5  # the five served; the refused ones never reached the scheduler
    assert all(0 <= slo[k] <= 1 for k in ("ttft", "tpot", "both")) and slo["ttft"] >= slo["both"]
    assert slo["both"] == usage["goodput"]["requests"] / 5
    assert usage["goodput"]["tokens"] == 8 * usage["goodput"]["requests"]
    assert usage["goodput"]["window_s"] > 0

    text = httpx.get(root + "/metrics", headers=METRICS_HEADERS, timeout=10).text
    assert 'driftsched_slo_judged_requests_total{tenant="gold"} 5.0' in text
    good = usage["goodput"]["requests"]
    assert f'driftsched_slo_met_requests_total{{objective="both",tenant="gold"}} {good}.0' in text
    assert 'driftsched_slo_objective_seconds{objective="ttft",tenant="bronze"} 20.0' in text


GUARD_ARGS = app_args(benchmark_mode=True, **{
    "replicas.seed": 2406,  # its own scheduler actor
    "replicas.time_scale": 1.0,  # an L4's pace in real time: ~6 ms a step for this model
    "core.scheduler.policy": "fifo",
    "auth.demo_keys": {GOLD: "gold"},
    # 1 ms per token: no replica's pace meets it, so the TPOT guard must act on every measurement
    "core.tenants": [{"name": "gold", "tier": 1, "tpot_slo_s": 0.001}],
})


@pytest.mark.slow
def test_the_tpot_guard_measures_each_replicas_pace_and_narrows_its_kv_while_the_pace_misses(
        serve_cluster: Any) -> None:
    base_url = serve_cluster.deploy(GUARD_ARGS)
    root = base_url.removesuffix("/v1")

    async def streams(n: int, tokens: int) -> list[int]:
        gold = openai.AsyncOpenAI(base_url=base_url, api_key=GOLD, max_retries=0, timeout=60)

        async def stream() -> int:
            got = 0
            chunks = await gold.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=tokens,
                stream=True, stream_options={"include_usage": True},
                extra_body={"driftsched_target_tokens": tokens})
            async for chunk in chunks:
                if chunk.usage is not None:
                    got = chunk.usage.completion_tokens
            return got

        async with gold:
            return list(await asyncio.gather(*(stream() for _ in range(n))))

    # ~2.5 s each at ~6 ms a step; the guard refuses grants, never stops a running stream
    assert asyncio.run(streams(4, 400)) == [400] * 4
    text = httpx.get(root + "/metrics", headers=METRICS_HEADERS, timeout=10).text
    paces, shares = (metric_samples(text, "driftsched_replica_step_seconds"),
                     metric_samples(text, "driftsched_replica_tpot_guard_kv_share"))
    assert len(paces) == len(shares) == 2, text[-2000:]
    assert max(paces) > 0.001 and min(shares) < 1.0, (paces, shares)
    assert asyncio.run(streams(1, 20)) == [20]  # a narrowed replica with nothing running takes any request


def _tokenizer(tmp: Path) -> Path:
    """A tokenizer for vLLM's random dataset: the tiny model's (driftsched/tiny_model.py)."""
    pytest.importorskip("vllm")
    from driftsched.tiny_model import build_tiny_model

    return build_tiny_model(tmp / "tiny")


GOODPUT_ARGS = app_args(**{
    "replicas.seed": 2405,  # its own scheduler actor: the usage window is this run
    # 4 slots at twice an L4's modelled time, ~0.3 s per request: about 12 requests/s. A run at 25/s
    # queues, and TTFT spreads from ~0 to ~1.5 s across the objective.
    "replicas.time_scale": 2.0,
    "replicas.engine_queue_slots": 0,  # the 4 slots above, nothing granted ahead: the spread it is sized for
    "core.scheduler.policy": "fifo",
    "auth.demo_keys": {GOLD: "gold"},
    "core.tenants": [{"name": "gold", "tier": 1, "ttft_slo_s": 0.8, "tpot_slo_s": 0.05}],
})


@pytest.mark.slow
def test_vllm_bench_serve_goodput_agrees_with_usage(serve_cluster: Any, tmp_path: Path) -> None:
    """vLLM's client and the gateway judge the same run against the same objectives.

    They measure from different places: vLLM's TTFT runs from sending the request to receiving the
    first chunk, the gateway's from the parsed body to the first token reaching it. The gateway's
    interval lies inside the client's, so every request that meets TTFT for vLLM meets it for the
    gateway, and the gateway may count more only among requests whose vLLM TTFT is past the objective
    by less than the gap (milliseconds; tens under load on two cores). The tolerance is the number of
    such borderline requests, with a margin of four times the run's mean gap (exact, from the two
    sides' mean TTFTs), and it must leave the check teeth.
    """
    base_url = serve_cluster.deploy(GOODPUT_ARGS)
    tokenizer = _tokenizer(tmp_path)
    out = tmp_path / "goodput.json"
    n = 40
    env = {**os.environ, "OPENAI_API_KEY": GOLD, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_goodput.py"), "--base-url",
         base_url.removesuffix("/v1"), "--model", MODEL, "--tokenizer", str(tokenizer),
         "--num-prompts", str(n), "--request-rate", "25", "--input-len", "32", "--output-len", "24",
         "--json", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    vllm, ours, borderline = report["vllm"], report["driftsched"], report["borderline"]
    summary = {k: v for k, v in report.items() if k != "vllm"} | {"vllm": vllm | {"requests": "..."}}
    assert report["goodput_ms"] == {"ttft": 800.0, "tpot": 50.0}  # the tenant's own objectives
    assert vllm["completed"] == n and ours["judged"] == n and ours["ttft_count"] == n
    # a run that both sides see as neither all good nor all bad, so agreement means something
    assert 0 < vllm["good"] < n and 0 < ours["good"] < n, summary
    assert 0 <= ours["mean_ttft_s"] < vllm["mean_ttft_s"], summary  # the nested intervals
    assert ours["met_ttft"] >= vllm["met_ttft"], summary
    assert borderline <= n // 3, summary  # a host busy elsewhere widens the gap, never past this
    assert ours["met_ttft"] - vllm["met_ttft"] <= borderline, summary
    assert abs(ours["good"] - vllm["good"]) <= borderline, summary
    # goodput rates: about the same count over windows that differ by the client's hop at each end
    assert math.isclose(ours["window_s"], vllm["duration_s"], rel_tol=0.1), summary
    assert ours["requests_per_s"] == pytest.approx(vllm["request_goodput"], rel=0.1,
                                                   abs=(borderline + 0.5) / vllm["duration_s"])
