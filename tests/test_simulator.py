"""Simulator: determinism, conservation, references, and the `driftsched simulate` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from driftsched.cli import main
from driftsched.core.config import CoreConfig
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.prefix_reference import single_lru_hit_rate
from driftsched.sim.simulator import ORACLE, UNCORRECTED, Simulation, core_config_for, with_placement
from driftsched.sim.workload import TenantSpec, Workload, WorkloadItem, paper_workload

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
PERF = PerfModel()
NO_DEADLINE_S = 3600.0  # longer than any request waits in these runs: every one finishes


@pytest.fixture(scope="module")
def workload():
    return paper_workload(1500, seed=3, replicas=2, load=1.0, perf=PERF)


def no_admission(config: CoreConfig) -> CoreConfig:
    """`config` without SLO-aware admission, so every request of these runs is admitted."""
    data = config.model_dump()
    data["scheduler"]["admission"]["enabled"] = False
    return CoreConfig.model_validate(data)


def run(workload, policy, replicas=2):
    config = no_admission(core_config_for(workload, PERF))
    return Simulation(workload, policy, PERF, replicas, config, queue_timeout_s=NO_DEADLINE_S).run()


@pytest.mark.parametrize(
    "policy", ["fifo", "priority", "weighted", "sjf", "aging", "bounded", ORACLE, UNCORRECTED]
)
def test_every_request_finishes_exactly_once_in_causal_order(workload, policy):
    r = run(workload, policy)
    arrival = np.array([it.arrival_s for it in workload.items])
    assert r.admitted.all()
    assert not np.isnan(r.finish).any()
    assert (r.dispatch >= arrival - 1e-9).all()
    assert (r.first_token > r.dispatch).all() and (r.finish >= r.first_token).all()
    counters = r.stats.counters
    assert sum(c.completed for c in counters.values()) == len(workload.items)
    assert sum(r.stats.queued.values()) == 0 and sum(r.stats.in_flight.values()) == 0


def test_bounded_takes_its_horizons_from_the_run_as_the_service_does(workload):
    data = core_config_for(workload, PERF).model_dump()
    data["tenants"][0]["latency_slo_s"] = 7.0
    sim = Simulation(workload, "bounded", PERF, 2, CoreConfig.model_validate(data), queue_timeout_s=45.0)
    policy = sim.scheduler.policy
    assert policy.horizon_s == 45.0  # type: ignore[attr-defined]
    assert policy.tenant_horizon_s == {data["tenants"][0]["name"]: 7.0}  # type: ignore[attr-defined]


def test_runs_are_deterministic(workload):
    a, b = run(workload, "weighted"), run(workload, "weighted")
    assert np.array_equal(a.finish, b.finish) and np.array_equal(a.corrected_estimate, b.corrected_estimate)
    again = paper_workload(1500, seed=3, replicas=2, load=1.0, perf=PERF)
    assert again.items == workload.items


def test_references_use_true_and_raw_lengths(workload):
    oracle, uncorrected = run(workload, ORACLE), run(workload, UNCORRECTED)
    true = np.array([it.output_tokens for it in workload.items], dtype=float)
    assert np.array_equal(oracle.corrected_estimate, true)
    assert np.array_equal(uncorrected.corrected_estimate, uncorrected.raw_estimate)


def test_correction_learns_during_the_run(workload):
    r = run(workload, "sjf")
    true = np.array([it.output_tokens for it in workload.items], dtype=float)
    late = slice(len(true) // 4, None)
    mae_raw = np.abs(r.raw_estimate[late] - true[late]).mean()
    mae_corrected = np.abs(r.corrected_estimate[late] - true[late]).mean()
    assert mae_corrected < 0.85 * mae_raw


def test_sjf_beats_fifo_median_under_contention(workload):
    fifo, sjf = run(workload, "fifo"), run(workload, "sjf")
    arrival = np.array([it.arrival_s for it in workload.items])
    assert np.median(sjf.finish - arrival) < 0.7 * np.median(fifo.finish - arrival)


def test_simulate_command_writes_summary_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "paper"
    code = main(
        [
            "simulate",
            "--workload",
            "paper",
            "--requests",
            "800",
            "--replicas",
            "2",
            "--policies",
            "fifo,sjf,aging",
            "--seeds",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "sjf-oracle" in printed and "correction_mae_reduction" in printed
    assert "steady window: arrivals from 10% to 90%" in printed and "vs fifo" in printed
    summary = json.loads((out / "summary.json").read_text())
    for kind in ("uncorrected", "corrected"):
        assert set(summary["estimator"][kind]) >= {"mae", "rmse"}
    assert set(summary["policies"]) == {"fifo", "sjf", "aging", "sjf-oracle", "sjf-uncorrected"}
    fifo = summary["policies"]["fifo"]
    assert set(fifo["e2e_s"]) >= {"p50", "p90", "p99", "mean"}
    assert set(fifo["ttft_s"]) >= {"p50", "p90", "p99"} and set(fifo["queue_wait_s"]) >= {"p50", "p99"}
    assert set(fifo["tpot_s"]) >= {"p50", "p99"}
    assert fifo["completed"] + fifo["rejected"] + fifo["shed"] + fifo["failed"] == 800
    # every tenant is judged against its objectives (the workload's tenants take their tiers')
    assert set(summary["objectives"]) == set(fifo["per_tenant"])
    assert set(fifo["slo"]) >= {"ttft", "tpot", "both"}
    assert set(fifo["goodput"]) == {"requests_per_s", "tokens_per_s"}
    assert 0 <= fifo["slo"]["both"] <= min(fifo["slo"]["ttft"], fifo["slo"]["tpot"]) <= 1
    window = fifo["window"]
    assert summary["window"]["from_share"] == 0.1 and 0.7 * 800 < window["requests"] < 0.9 * 800
    tenant = next(iter(fifo["per_tenant"].values()))
    assert set(tenant) >= {"e2e_s", "completed", "slo", "goodput", "ttft_s"}
    assert set(tenant["e2e_s"]) >= {"p50", "p99"}
    assert set(summary["vs_fifo"]) == {"sjf", "aging", "sjf-oracle", "sjf-uncorrected"}
    assert summary["vs_fifo"]["sjf"]["goodput_tokens_ratio"]["ci95"] is None  # one seed: no interval
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 * 800
    for png in ("latency_cdf.png", "per_tenant_latency.png", "estimate_error.png"):
        assert (out / png).stat().st_size > 10_000


def test_simulate_replays_a_generic_csv_trace(tmp_path, capsys):
    trace = tmp_path / "mine.csv"
    lines = ["arrival_s,tenant,category,prompt_tokens,max_tokens,output_tokens,priority"]
    categories = ["qa", "chat", "code"]
    lines += [
        f"{i * 0.2:.1f},{'ab'[i % 2]},{categories[i % 3]},{100 + i},512,{20 + (i * 37) % 400},{i % 2}"
        for i in range(300)
    ]
    trace.write_text("\n".join(lines) + "\n")
    code = main(
        [
            "simulate",
            "--trace",
            str(trace),
            "--replicas",
            "1",
            "--policies",
            "fifo",
            "--seeds",
            "1",
            "--no-plots",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["policies"]["fifo"]["completed"] == 300
    assert set(summary["policies"]["fifo"]["per_tenant"]) == {"a", "b"}


def test_simulate_reports_a_bad_trace_clearly(tmp_path, capsys):
    trace = tmp_path / "bad.csv"
    trace.write_text("arrival_s,tenant,category,prompt_tokens,max_tokens,output_tokens\n0,a,chat,ten,5,5\n")
    assert main(["simulate", "--trace", str(trace), "--out", str(tmp_path / "o")]) == 2
    assert "bad.csv:2: column 'prompt_tokens'" in capsys.readouterr().err


@pytest.mark.skipif(not TRACES.is_dir(), reason="../shared/traces is not present")
def test_simulate_replays_the_azure_trace(tmp_path):
    code = main(
        [
            "simulate",
            "--trace",
            str(TRACES / "azure2023_conv.csv"),
            "--requests",
            "600",
            "--replicas",
            "2",
            "--load",
            "0.9",
            "--policies",
            "fifo,sjf",
            "--seeds",
            "1",
            "--no-plots",
            "--out",
            str(tmp_path / "az"),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "az" / "summary.json").read_text())
    assert summary["policies"]["sjf"]["completed"] == 600


def test_requests_queued_past_the_deadline_expire_and_count_as_failures():
    heavy = paper_workload(600, seed=5, replicas=1, load=2.5, perf=PERF)
    config = core_config_for(heavy, PERF)
    r = Simulation(heavy, "fifo", PERF, 1, config, queue_timeout_s=5.0).run()
    assert r.expired.any()
    assert np.isnan(r.finish[r.expired]).all() and np.isnan(r.dispatch[r.expired]).all()
    # Every admitted request either finished or expired; none is left in between.
    assert (np.isnan(r.finish) == r.expired)[r.admitted].all()
    assert sum(c.expired for c in r.stats.counters.values()) == int(r.expired.sum())
    from driftsched.sim.report import policy_summary

    summary = policy_summary(r)
    assert summary["expired"] == int(r.expired.sum()) == summary["failed"]
    if summary["expired"] > 0.01 * len(heavy.items):
        assert summary["e2e_s"]["p99"] == float("inf")
    assert sum(t["expired"] for t in summary["per_tenant"].values()) == summary["expired"]


def test_the_simulator_gives_the_intake_what_a_live_request_carries(workload):
    from driftsched.bench.prompts import intake_fields

    r = run(workload, "sjf")
    fields = [intake_fields(it) for it in workload.items]
    # Categories are the declared ones the HTTP body carries, estimates start from the prompt as counted
    # by the service (its synthesised text), never from the item's own fields.
    assert r.category == [f.category for f in fields]
    prompts = np.array([f.prompt_tokens for f in fields])
    assert (prompts >= np.array([it.prompt_tokens for it in workload.items])).all()


def test_group_oracle_scores_the_true_group_means():
    from driftsched.sim.report import group_oracle_errors

    r = run(paper_workload(400, seed=1, replicas=2, load=0.5, perf=PERF), "fifo")
    phase = [0] * len(r.items)
    got = group_oracle_errors(r, phase)
    true = np.array([it.output_tokens for it in r.items], dtype=float)
    groups: dict[tuple[str, str], list[float]] = {}
    for it, cat, y in zip(r.items, r.category, true, strict=True):
        groups.setdefault((it.tenant, cat), []).append(y)
    err = np.concatenate([np.array(v) - np.mean(v) for v in groups.values()])
    assert got["mae"] == pytest.approx(np.abs(err).mean())
    assert got["rmse"] == pytest.approx(np.sqrt((err**2).mean()))


def test_seed_aggregate_takes_medians_and_spreads_with_null_as_worst():
    from driftsched.sim.seeds import aggregate

    docs = [{"seed": s, "policies": {"sjf": {"e2e_s": {"p99": v}, "name": "x"}}} for s, v in
            ((1, 10.0), (2, None), (3, 30.0))]
    out = aggregate(docs)
    assert out["seeds"] == [1, 2, 3]
    assert out["median"]["policies"]["sjf"]["e2e_s"]["p99"] == 30.0
    assert out["spread"]["policies"]["sjf"]["e2e_s"]["p99"] == [10.0, float("inf")]
    assert out["median"]["policies"]["sjf"]["name"] == "x"


def test_simulate_runs_several_seeds(tmp_path, capsys):
    out = tmp_path / "seeds"
    code = main(["simulate", "--workload", "paper", "--requests", "300", "--replicas", "2", "--load", "0.9",
                 "--policies", "fifo,sjf", "--seeds", "2", "--no-plots", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert {"fifo", "sjf", ORACLE, UNCORRECTED} <= set(summary["median"]["policies"])
    assert (out / "seed-0" / "summary.json").exists() and (out / "seed-1" / "requests.csv").exists()
    printed = capsys.readouterr().out
    assert "median over seeds 0..1" in printed and "[min, max]" in printed
    assert "vs fifo, paired by seed" in printed
    vs = summary["vs_fifo"]["sjf"]
    assert vs["goodput_tokens_ratio"]["n"] == 2 and len(vs["goodput_tokens_ratio"]["ci95"]) == 2
    assert set(vs["slo_both_points"]) == set(summary["median"]["policies"]["fifo"]["per_tenant"])
    assert summary["median"]["vs_fifo"] == summary["vs_fifo"]  # the median page shows it
    one = json.loads((out / "seed-0" / "summary.json").read_text())
    assert {"mae", "rmse"} <= set(one["estimator"]["group_oracle"])
    assert 0 < one["policies"]["fifo"]["utilisation"] <= 1


# -- prefix caching and placement -----------------------------------------------------------------


def _conversations(sessions: int, turns: int, block: int = 64) -> Workload:
    """`sessions` conversations of `turns` turns, interleaved: turn k's prompt is turn k-1's prompt, its
    answer and a new message, so it extends turn k-1's blocks; every session shares a 2-block system
    prompt. What a prefix cache (and a placement that keeps a session on one replica) is for."""
    items = []
    for s in range(sessions):
        context = 2 * block
        for k in range(turns):
            prompt = context + 3 * block
            blocks = (1, 2, *(1_000 * (s + 1) + j for j in range(2, prompt // block)))
            at = 2.0 * k + 0.05 * s
            items.append(WorkloadItem(at, "a", "chat", prompt, 256, 200, prefix_blocks=blocks))
            context = prompt + 200
    items.sort(key=lambda it: it.arrival_s)
    return Workload("conversations", items, (TenantSpec("a", tier=1, weight=1.0),), block_tokens=block)


def test_single_lru_reference_counts_leading_blocks_found_in_one_pool_wide_cache():
    items = [
        WorkloadItem(0.0, "a", "chat", 200, 8, 8, prefix_blocks=(1, 2, 3)),  # cold: 0 of 200
        WorkloadItem(1.0, "a", "chat", 300, 8, 8, prefix_blocks=(1, 2, 3, 4)),  # 3 blocks: 192 of 300
        WorkloadItem(2.0, "a", "chat", 100, 8, 8, prefix_blocks=(9,)),  # 0 of 100
        WorkloadItem(3.0, "a", "chat", 64, 8, 8, prefix_blocks=(1,)),  # capped: 63 of 64
    ]
    workload = Workload("w", items, (TenantSpec("a", tier=1, weight=1.0),), block_tokens=64)
    assert single_lru_hit_rate(workload, 10 * 64) == pytest.approx((192 + 63) / 664)
    # room for 4 blocks: the third request's block evicts the oldest, the second's tail (4): heads stay
    assert single_lru_hit_rate(workload, 4 * 64) == pytest.approx((192 + 63) / 664)
    assert single_lru_hit_rate(workload, 0) == 0.0


def test_the_simulation_places_by_the_configured_rule_and_records_cached_tokens_and_replicas():
    workload = _conversations(sessions=12, turns=6)
    config = no_admission(core_config_for(workload, PERF))
    hits = {}
    for rule in ("most-free-kv", "driftsched"):
        placed = with_placement(config, rule)
        sim = Simulation(workload, "fifo", PERF, 4, placed, queue_timeout_s=NO_DEADLINE_S)
        assert sim.placement.rule.name == rule and sim.placement.block_tokens == 64
        r = sim.run()
        assert not np.isnan(r.finish).any() and set(r.replica.tolist()) <= {0, 1, 2, 3}
        assert r.prefix_hit_tokens == np.nansum(r.cached_tokens) > 0  # no preemption: one admission each
        hits[rule] = r.prefix_hit_tokens / r.prefix_query_tokens
    # a session kept on its replica finds its earlier turns; spread by free KV it mostly does not
    assert hits["driftsched"] > hits["most-free-kv"] + 0.2


def test_simulate_compares_placements_side_by_side(tmp_path, capsys):
    out = tmp_path / "cmp"
    rules = "most-free-kv,driftsched"
    code = main(["simulate", "--trace", str(TRACES / "mooncake_conversation.jsonl"), "--requests", "300",
                 "--replicas", "2", "--load", "0.8", "--policies", "fifo", "--seeds", "1", "--no-plots",
                 "--placements", rules, "--out", str(out)])
    assert code == 0
    for rule in rules.split(","):
        summary = json.loads((out / rule / "summary.json").read_text())
        assert summary["placement"] == rule and 0 < summary["prefix_cache_reference"]["hit_rate"] < 1
        fifo = summary["policies"]["fifo"]
        assert 0 < fifo["prefix_cache"]["hit_rate"] < 1 and fifo["prefix_cache"]["cached_prompt_tokens"] > 0
        assert fifo["ttft_s"]["p90"] > 0 and fifo["replica_share"]["max_over_mean"] >= 1
        header = (out / rule / "requests.csv").read_text().splitlines()[0].split(",")
        assert header[-3:] == ["cached_tokens", "replica", "status"]
    comparison = json.loads((out / "placements.json").read_text())
    assert set(comparison["placements"]) == set(rules.split(","))
    assert set(comparison["placements"]["driftsched"]["fifo"]) >= {"hit_rate", "ttft_p50_s", "ttft_p90_s",
                                                                  "output_tokens_per_s", "max_over_mean"}
    printed = capsys.readouterr().out
    assert "one LRU cache" in printed and "**driftsched**" in printed
    assert "| placement |" in (out / "placements.md").read_text()


def test_unknown_placements_are_named(tmp_path, capsys):
    rules = "driftsched,nearest"
    code = main(["simulate", "--workload", "paper", "--placements", rules, "--out", str(tmp_path)])
    assert code == 2 and "unknown: nearest" in capsys.readouterr().err
