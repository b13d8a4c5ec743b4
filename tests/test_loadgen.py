"""Load generator, live records in the shared report, and `driftsched bench live` end to end."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from driftsched.bench import fidelity
from driftsched.bench.command import parse_mapping
from driftsched.bench.fidelity import as_sent, category_match, compare, format_comparison
from driftsched.bench.live import policy_args
from driftsched.bench.loadgen import LoadOptions, Target, request_body, run_load, send_times, to_records
from driftsched.bench.prompts import LEADS, approx_tokens, intake_fields, synthesize
from driftsched.bench.service import service_estimator
from driftsched.core.classify import Classifier
from driftsched.core.config import CoreConfig
from driftsched.core.prefix import common_prefix, text_block_hashes
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.records import RunRecords
from driftsched.sim.report import summarize, write_results
from driftsched.sim.simulator import core_config_for
from driftsched.sim.workload import TenantSpec, Workload, WorkloadItem, paper_workload

ROOT = Path(__file__).resolve().parents[1]


def _items(n: int, gap: float = 0.01) -> list[WorkloadItem]:
    return [
        WorkloadItem(i * gap, ("a", "b")[i % 2], "chat", 40, 64, 5 + i % 3, None) for i in range(n)
    ]


# -- prompts, pacing, options ----------------------------------------------------------------------


@pytest.mark.parametrize("category", sorted(LEADS))
@pytest.mark.parametrize("tokens", [1, 17, 180, 2000])
def test_prompt_has_the_token_count_and_the_category_cue(category, tokens):
    text = synthesize(category, tokens)
    assert approx_tokens(text) == max(tokens, approx_tokens(LEADS[category]))
    # No cue for qa and chat: the service tells them apart by max_tokens, and calls a long prompt a document.
    expected = category if category not in ("qa", "chat") else ("summarize" if tokens >= 1500 else "chat")
    assert Classifier().category(None, approx_tokens(text), 512, text) == expected


def test_the_body_carries_the_intake_fields_and_the_declared_category():
    items = paper_workload(40, seed=3, replicas=1, load=1.0).items
    target = Target("http://svc/v1", {}, model="m")
    for item in items:
        fields, body = intake_fields(item), request_body(item, target)
        assert body["category"] == fields.category == item.category
        assert (body["prompt"], body["max_tokens"]) == (fields.prompt_text, item.max_tokens)
        assert fields.prompt_tokens == approx_tokens(fields.prompt_text) >= item.prompt_tokens
        assert body["model"] == "m" and body["driftsched_target_tokens"] <= item.max_tokens
        assert "priority" not in body  # the API has no such field: a tenant's tier comes with its key
    unknown = WorkloadItem(0.0, "a", "", 40, 64, 5)  # not a category the service knows: none declared
    assert intake_fields(unknown).category is None and "category" not in request_body(unknown, target)


def test_send_times_scale_the_workload_or_draw_poisson():
    items = _items(5, gap=2.0)
    assert send_times(items, LoadOptions(time_scale=0.5)) == [0.0, 1.0, 2.0, 3.0, 4.0]
    poisson = send_times(_items(2000), LoadOptions(rate_rps=50.0))
    assert poisson[0] == 0.0 and all(b >= a for a, b in itertools.pairwise(poisson))
    assert 1999 / poisson[-1] == pytest.approx(50.0, rel=0.1)


def test_parse_mapping_pairs_and_files(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"gold": "sk-1"}))
    assert parse_mapping(["silver=sk-2", str(f)], "--keys") == {"silver": "sk-2", "gold": "sk-1"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_mapping(["=x"], "--keys")


def test_unmapped_tenant_is_named_before_anything_is_sent():
    target = Target("http://127.0.0.1:1/v1", {"gold": "k"}, {"a": "gold"})
    with pytest.raises(ValueError, match="'b'"):
        asyncio.run(run_load(_items(2), target, LoadOptions(progress=False)))


# -- the client against a fake service (httpx MockTransport) ------------------------------------


def _sse(tokens: int) -> bytes:
    chunks = [{"choices": [{"index": 0, "text": " lorem"}]} for _ in range(tokens)]
    chunks.append({"choices": [], "usage": {"completion_tokens": tokens}})
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def test_load_is_open_loop_and_records_what_the_client_saw():
    seen: list[dict] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append({"key": request.headers["authorization"], **body})
        if request.headers["authorization"] == "Bearer sk-b":
            return httpx.Response(429, json={"error": {"code": "tenant_request_quota"}})
        await asyncio.sleep(0.3)  # slower than the gaps: an open loop keeps sending
        headers = {"x-driftsched-category": "chat", "x-driftsched-estimated-tokens": "12.5"}
        return httpx.Response(200, content=_sse(body["driftsched_target_tokens"]), headers=headers)

    items = _items(10)
    target = Target("http://svc/v1", {"A": "sk-a", "b": "sk-b"}, {"a": "A"})
    started = time.monotonic()
    result = asyncio.run(
        run_load(items, target, LoadOptions(progress=False, timeout_s=5), httpx.MockTransport(handler))
    )
    assert time.monotonic() - started < 1.5  # 10 x 0.3 s would take 3 s closed-loop
    assert [r.status for r in result.records] == ["completed", "http_429:tenant_request_quota"] * 5
    done = result.records[0]
    assert done.tokens == items[0].output_tokens and done.estimate == 12.5
    assert done.send_s <= done.first_token_s <= done.last_token_s
    body = seen[0]
    assert body["stream"] is True and body["max_tokens"] == 64 and body["category"] == "chat"
    assert body["driftsched_target_tokens"] == items[0].output_tokens
    assert approx_tokens(body["prompt"]) == 40 and "output_tokens" not in body

    recs = to_records("fifo", items, result, time_scale=0.5)
    assert recs.admitted.tolist() == [True, False] * 5
    assert np.allclose(recs.arrival, [r.send_s / 0.5 for r in result.records])
    summary = summarize([recs], {"workload": "t"})
    assert summary["policies"]["fifo"]["completed"] == 5 and summary["policies"]["fifo"]["rejected"] == 5
    assert summary["estimator"]["corrected"]["mae"] == pytest.approx(
        np.mean([abs(12.5 - it.output_tokens) for it in items[::2]])
    )


def test_timeouts_and_duration_bound_the_run():
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    options = LoadOptions(progress=False, timeout_s=0.3, duration_s=0.045)
    target = Target("http://svc/v1", {"a": "k", "b": "k"})
    started = time.monotonic()
    result = asyncio.run(run_load(_items(10), target, options, httpx.MockTransport(handler)))
    assert time.monotonic() - started < 2
    assert [r.status for r in result.records] == ["timeout"] * 5 + ["not_sent"] * 5


# -- the service's figures, the live app args, fidelity inputs -----------------------------------


METRICS = """\
# TYPE driftsched_estimate_mae_tokens gauge
driftsched_estimate_mae_tokens{tenant="a",category="chat",estimate="raw"} 10.0
driftsched_estimate_mae_tokens{tenant="a",category="chat",estimate="corrected"} 4.0
driftsched_estimate_mae_tokens{tenant="b",category="qa",estimate="raw"} 40.0
driftsched_estimate_mae_tokens{tenant="b",category="qa",estimate="corrected"} 10.0
driftsched_estimate_mae_tokens{tenant="*",category="qa",estimate="raw"} 999.0
# TYPE driftsched_estimate_rmse_tokens gauge
driftsched_estimate_rmse_tokens{tenant="a",category="chat",estimate="raw"} 20.0
driftsched_estimate_rmse_tokens{tenant="a",category="chat",estimate="corrected"} 5.0
driftsched_estimate_rmse_tokens{tenant="b",category="qa",estimate="raw"} 40.0
driftsched_estimate_rmse_tokens{tenant="b",category="qa",estimate="corrected"} 10.0
# TYPE driftsched_estimate_observations gauge
driftsched_estimate_observations{tenant="a",category="chat"} 3.0
driftsched_estimate_observations{tenant="b",category="qa"} 1.0
driftsched_estimate_observations{tenant="*",category="qa"} 1.0
"""


def test_service_estimator_weights_rows_by_observations():
    est = service_estimator(METRICS)
    assert est["observations"] == 4
    assert est["uncorrected"]["mae"] == pytest.approx((3 * 10 + 40) / 4)
    assert est["corrected"]["rmse"] == pytest.approx(((3 * 25 + 100) / 4) ** 0.5)
    assert service_estimator(METRICS, frozenset({"b"}))["corrected"]["mae"] == pytest.approx(4.0)


def test_policy_args_convert_workload_seconds_to_real_time():
    tenants = (TenantSpec("a", 0, 2.0, requests_per_minute=60.0), TenantSpec("b", 1, 1.0))
    workload = Workload("w", _items(20), tenants)
    perf = PerfModel()
    core = core_config_for(workload, perf, CoreConfig.model_validate({"tenants": [{"name": "x"}]}))
    args = policy_args({"core": {}, "replicas": {"num_replicas": 2}}, core, "aging", 0.1, 30.0, 20)
    from serve_app.config import parse_app_config

    config = parse_app_config(args)  # valid as the app parses it
    assert config.benchmark_mode and config.core.scheduler.policy == "aging"
    assert config.core.scheduler.policy_options == {"age_step_s": pytest.approx(1.0)}
    assert config.core.tenants[0].requests_per_minute == pytest.approx(600.0)
    assert config.core.estimator.drift.half_life_s == pytest.approx(core.estimator.drift.half_life_s * 0.1)
    assert config.replicas.time_scale == 0.1 and config.gateway.drift_snapshot_path is None
    assert config.replicas.stream_interval_s == pytest.approx(0.05)  # 0.5 modelled seconds
    assert set(config.auth.demo_keys.values()) == {"a", "b", "bench-warmup"}


def test_policy_args_run_the_simulated_policy_options_on_the_replicas_clock():
    tenants = (TenantSpec("a", 0, 2.0), TenantSpec("b", 1, 1.0))
    workload = Workload("w", _items(20), tenants)
    base = CoreConfig.model_validate({
        "tenants": [{"name": "x"}],
        "scheduler": {"policy": "bounded", "policy_options": {"tenant_horizon_s": {"a": 10}},
                      "preemption": {"enabled": True, "wait_s": 2.0, "min_run_s": 1.0}},
    })
    core = core_config_for(workload, PerfModel(), base)
    from serve_app.config import parse_app_config

    bounded = parse_app_config(policy_args({"core": {}}, core, "bounded", 0.1, 30.0, 20)).core.scheduler
    options = bounded.policy_options  # the horizon the simulator derives, 300 modelled s: the gateway's 30
    assert options == {"horizon_s": pytest.approx(30.0), "tenant_horizon_s": {"a": pytest.approx(1.0)}}
    preemption = bounded.preemption
    assert (preemption.wait_s, preemption.min_run_s) == (pytest.approx(0.2), pytest.approx(0.1))
    # another policy gets its own defaults, not the configured policy's options (as in the simulator)
    relative = parse_app_config(policy_args({"core": {}}, core, "relative", 0.1, 30.0, 20)).core.scheduler
    assert relative.policy_options["area_per_s"] == pytest.approx(30_000.0)
    assert "tenant_horizon_s" not in relative.policy_options
    fifo = parse_app_config(policy_args({"core": {}}, core, "fifo", 0.1, 30.0, 20)).core.scheduler
    assert fifo.policy_options == {}


def test_fidelity_simulates_what_was_sent():
    workload = paper_workload(50, seed=1, replicas=1, load=1.0)
    sent = as_sent(workload)
    for it, orig in zip(sent.items, workload.items, strict=True):
        assert it.category == orig.category and approx_tokens(it.prompt_text) == it.prompt_tokens
        # what the service sees, unchanged by as_sent
        assert intake_fields(it, sent.block_tokens) == intake_fields(orig, workload.block_tokens)
    assert [it.output_tokens for it in sent.items] == [it.output_tokens for it in workload.items]
    row = compare({"sjf": {"e2e_s": {"p50": 2.0, "p99": 4.0}, "ttft_s": {"p50": 1.0}}},
                  {"sjf": {"e2e_s": {"p50": 1.0, "p99": 4.0}, "ttft_s": {"p50": 0.5}}})["sjf"]
    assert row["e2e_p50"]["ratio"] == 2.0 and row["e2e_p99"]["ratio"] == 1.0
    assert np.isnan(row["makespan"]["ratio"])  # neither side said how long it ran


def _categories(policy: str, categories: list[str], admitted: list[bool]) -> RunRecords:
    n = len(categories)
    nan = np.full(n, np.nan)
    return RunRecords(policy, np.array(["a"] * n), categories, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                      np.array(admitted), ["completed" if a else "rejected" for a in admitted])


def test_category_match_counts_requests_both_runs_admitted():
    # The live run sent a prefix of the items (4 of 5); rows 0 and 2 were admitted on both sides.
    live = _categories("sjf", ["code", "chat", "qa", "chat"], [True, True, True, False])
    simulated = _categories("sjf", ["code", "", "summarize", "chat", "qa"], [True, False, True, True, True])
    assert category_match(live, simulated) == {"compared": 2, "matched": 1, "share": 0.5}
    assert np.isnan(category_match(live, _categories("sjf", ["qa"] * 4, [False] * 4))["share"])
    with pytest.raises(ValueError, match="4 rows"):
        category_match(live, _categories("sjf", ["qa"] * 3, [True] * 3))
    row = compare({"sjf": {"e2e_s": {"p50": 2.0, "p99": 4.0}, "ttft_s": {"p50": 1.0}}},
                  {"sjf": {"e2e_s": {"p50": 1.0, "p99": 4.0}, "ttft_s": {"p50": 0.5}}})
    row["sjf"]["category_match"] = category_match(live, simulated)
    assert "50.0% of 2" in format_comparison(row, "t").splitlines()[-1]


def test_a_service_and_the_simulator_given_the_same_items_agree_on_categories():
    """Loadgen against a fake service that classifies like the ingress, the simulator on `as_sent`."""
    workload = paper_workload(40, seed=2, replicas=1, load=1.0)
    classifier = Classifier()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        category = classifier.category(
            body.get("category"), approx_tokens(body["prompt"]), body["max_tokens"], body["prompt"]
        )
        headers = {"x-driftsched-category": category, "x-driftsched-estimated-tokens": "1"}
        return httpx.Response(200, content=_sse(1), headers=headers)

    keys = {t.name: "k" for t in workload.tenants}
    options = LoadOptions(progress=False, time_scale=0.0)
    result = asyncio.run(run_load(workload.items, Target("http://svc/v1", keys), options,
                                  httpx.MockTransport(handler)))
    live = to_records("fifo", workload.items, result, 1.0)
    perf = PerfModel()
    (simulated,) = fidelity.simulate(workload, ["fifo"], perf, 1, core_config_for(workload, perf))
    assert category_match(live, simulated) == {"compared": 40, "matched": 40, "share": 1.0}


def test_live_records_and_simulated_runs_share_the_report(tmp_path):
    items = _items(6)
    result = asyncio.run(
        run_load(
            items,
            Target("http://svc/v1", {"a": "k", "b": "k"}),
            LoadOptions(progress=False),
            httpx.MockTransport(lambda r: httpx.Response(200, content=_sse(3))),
        )
    )
    est = {"uncorrected": {"mae": 9.0, "rmse": 12.0}, "corrected": {"mae": 3.0, "rmse": 4.0}}
    summary = write_results([to_records("sjf", items, result, 1.0, est)], {"workload": "t"}, tmp_path)
    assert summary["comparisons"]["correction_mae_reduction"] == pytest.approx(2 / 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "estimate_error.png", "latency_cdf.png", "per_tenant_latency.png", "requests.csv", "summary.json"
    ]
    header = (tmp_path / "requests.csv").read_text().splitlines()[0]
    assert header.startswith("policy,request,tenant,category,arrival_s,dispatch_s,first_token_s,finish_s")


# -- end to end: a small `driftsched bench live` on simulated replicas ------------------------


@pytest.mark.slow
def test_bench_live_two_policies_end_to_end(tmp_path):
    out = tmp_path / "live"
    cmd = [sys.executable, "-m", "driftsched.cli", "bench", "live", "--policies", "fifo,sjf",
           "--workload", "paper", "--requests", "60", "--load", "1.5", "--time-scale", "0.05",
           "--timeout", "60", "--out", str(out)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "live vs simulated" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"fifo", "sjf"} == set(summary["fidelity"])
    for policy in summary["policies"].values():
        assert policy["completed"] == 60 and policy["statuses"] == {"completed": 60}
        assert policy["e2e_s"]["p50"] > 0 and policy["service_observations"] == 60
        assert policy["makespan_s"] >= policy["e2e_s"]["p99"]
        assert policy["estimator"]["uncorrected"]["mae"] > 0
    assert summary["fidelity"]["sjf"]["e2e_p50"]["simulated"] > 0
    assert "same category" in proc.stdout
    for row in summary["fidelity"].values():  # 1.0 once the simulator builds requests by intake_fields
        match = row["category_match"]
        assert match["compared"] > 0 and 0.0 <= match["share"] <= 1.0
        assert row["verdict"] in ("met", "missed") and 0.0 <= row["attainment"]["live"] <= 1.0
        assert [s["seed"] for s in row["seeds"]] == [0]
    assert "### Live against the simulator" in (out / "results.md").read_text()
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 60
    simulated = (out / "requests_simulated.csv").read_text().splitlines()
    assert simulated[0] == rows[0] and len(simulated) == 1 + 2 * 60  # the same columns, every item
    assert {line.split(",")[0] for line in simulated[1:]} == {"fifo", "sjf"}
    assert (out / "latency_cdf.png").exists()


def test_bench_live_sizes_a_vllm_config_with_the_default_model_and_no_simulator():
    from driftsched.bench.command import _live_perf

    args = {"replicas": {"engine": "vllm", "model": "./tiny", "num_replicas": 3}}
    _, replicas, model, simulated = _live_perf(args)
    assert (replicas, model, simulated) == (3, "./tiny", False)


def test_prefix_blocks_become_text_the_service_hashes_alike() -> None:
    """Items sharing k prefix blocks send prompts whose first k hash blocks are equal, and no more."""
    a = WorkloadItem(0.0, "t", "chat", 700, 100, 50, prefix_blocks=(11, 22, 33))
    b = WorkloadItem(0.0, "t", "code", 900, 100, 50, prefix_blocks=(11, 22, 44, 55))
    sent = [intake_fields(it, 256) for it in (a, b)]
    assert [f.prompt_tokens for f in sent] == [700, 900]
    ha, hb = (text_block_hashes(f.prompt_text, 256) for f in sent)
    assert (len(ha), len(hb), common_prefix(ha, hb)) == (2, 3, 2)
    assert intake_fields(a).prompt_text != sent[0].prompt_text  # without a block size: no prefix text
    again = replace(a, prompt_text=sent[0].prompt_text)
    assert intake_fields(again, 256).prompt_text == sent[0].prompt_text  # idempotent
