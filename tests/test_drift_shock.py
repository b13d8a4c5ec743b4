"""The drift-shock workload changes only what it says, when it says; the shock report's arithmetic on
hand-made runs; the saas workload's documented shape."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from itertools import pairwise
from statistics import mean

import numpy as np
import pytest

from driftsched.core.slo import Objectives, tier_objectives
from driftsched.sim.command import add_workload_arguments, build_workload
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.records import RunRecords
from driftsched.sim.shock import (
    Shock,
    apply_shock,
    combine_seeds,
    drift_shock_workload,
    misses_before,
    recovery_time,
    shock_figures,
    windows,
)
from driftsched.sim.simulator import core_config_for
from driftsched.sim.workload import (
    CATEGORIES,
    PROFILES,
    SAAS_PROFILES,
    Workload,
    WorkloadItem,
    paper_workload,
    saas_workload,
)

PERF = PerfModel()


@pytest.fixture(scope="module")
def base():
    return paper_workload(3000, seed=3, replicas=2, load=0.8, perf=PERF, drift=False)


# -- the workload ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("factor", "prompt_tokens"), [(3.0, 400), (0.3, -300)])
def test_shock_changes_only_the_tenants_prompts_and_the_categorys_answers_from_its_instant(
    base, factor, prompt_tokens
):
    shock = Shock(factor=factor, prompt_tokens=prompt_tokens)
    shocked = apply_shock(base, shock)
    n = len(base.items)
    first = math.ceil(0.5 * n)
    assert shocked.shock_s == base.items[first].arrival_s
    assert base.items[first - 1].arrival_s < shocked.shock_s  # one instant: nothing before it changes
    changed_prompt = changed_output = 0
    for b, s in zip(base.items, shocked.items, strict=True):
        assert (s.arrival_s, s.tenant, s.category, s.max_tokens, s.prompt_text) == (
            b.arrival_s, b.tenant, b.category, b.max_tokens, b.prompt_text,
        )  # fmt: skip
        if b.arrival_s < shocked.shock_s:
            assert s == b
            continue
        want_prompt = (
            max(8, b.prompt_tokens + prompt_tokens) if b.tenant == "support-bot" else b.prompt_tokens
        )
        want_output = (
            min(b.max_tokens, max(1, round(b.output_tokens * factor)))
            if b.category == "chat"
            else b.output_tokens
        )
        assert (s.prompt_tokens, s.output_tokens) == (want_prompt, want_output)
        changed_prompt += s.prompt_tokens != b.prompt_tokens
        changed_output += s.output_tokens != b.output_tokens
    assert changed_prompt > 100 and changed_output > 100  # the shock is not vacuous
    # The drift phases (what scores the estimates afterwards) start at the same instant.
    phases = shocked.phases()
    assert all(p == (it.arrival_s >= shocked.shock_s) for p, it in zip(phases, shocked.items, strict=True))


def test_the_shocked_category_gets_about_factor_times_longer_where_max_tokens_allow(base):
    shocked = apply_shock(base, Shock(factor=3.0))
    assert shocked.shock_s is not None
    after = [(b, s) for b, s in zip(base.items, shocked.items, strict=True) if b.arrival_s >= shocked.shock_s]
    uncapped = [(b, s) for b, s in after if b.category == "chat" and 3 * b.output_tokens <= b.max_tokens]
    assert mean(s.output_tokens for _, s in uncapped) == pytest.approx(
        3 * mean(b.output_tokens for b, _ in uncapped), rel=0.01
    )


def test_requests_arriving_together_fall_on_the_same_side_of_the_shock():
    times = [0.0, 1.0, 2.0, 2.0, 3.0, 4.0]  # the shock index (3) shares its instant with index 2
    items = [WorkloadItem(t, "support-bot", "chat", 100, 512, 50) for t in times]
    shocked = apply_shock(Workload("w", items, (PROFILES[0].spec,)), Shock())
    assert shocked.shock_s == 3.0
    assert [it.output_tokens for it in shocked.items] == [50, 50, 50, 50, 150, 150]
    assert shocked.phases() == [0, 0, 0, 0, 1, 1]


def test_drift_shock_workload_has_no_other_drift(base):
    workload = drift_shock_workload(3000, seed=3, replicas=2, load=0.8, perf=PERF)
    assert workload.name == "drift-shock" and workload.shock_s is not None
    assert [it.arrival_s for it in workload.items] == [it.arrival_s for it in base.items]
    half = len(workload.items) // 2

    def mean_out(items, tenant, cat):
        return mean(it.output_tokens for it in items if it.tenant == tenant and it.category == cat)

    before, after = workload.items[: half - 50], workload.items[half + 50 :]
    # The paper's own template change (code-assist's code x2) is absent here; the chat shock is not.
    assert mean_out(after, "code-assist", "code") == pytest.approx(
        mean_out(before, "code-assist", "code"), rel=0.25
    )
    assert mean_out(after, "support-bot", "chat") > 1.8 * mean_out(before, "support-bot", "chat")


def test_build_workload_makes_the_drift_shock_from_the_command_line():
    parser = argparse.ArgumentParser()
    add_workload_arguments(parser)
    args = parser.parse_args(["--workload", "drift-shock", "--requests", "600", "--shock-factor", "0.3",
                              "--shock-prompt-tokens", "-100", "--load", "0.9"])  # fmt: skip
    built = build_workload(argparse.Namespace(**{**vars(args), "replicas": 2}), PERF)
    want = drift_shock_workload(600, seed=0, replicas=2, load=0.9, perf=PERF, shock=Shock(0.3, -100))
    assert built.items == want.items and built.shock_s == want.shock_s
    saas = build_workload(argparse.Namespace(**{**vars(args), "workload": "saas", "replicas": 2}), PERF)
    assert saas.items == saas_workload(600, seed=0, replicas=2, load=0.9, perf=PERF).items


def test_a_shock_that_cannot_happen_is_refused_with_the_fix(base):
    with pytest.raises(ValueError, match="factor must be > 0"):
        Shock(factor=0.0)
    with pytest.raises(ValueError, match="mid-run"):
        Shock(at=1.0)
    with pytest.raises(ValueError, match="choose one of"):
        Shock(category="poetry")
    with pytest.raises(ValueError, match="not one of the workload's tenants"):
        apply_shock(base, Shock(tenant="nobody"))


# -- the report, on hand-made runs ----------------------------------------------------------------

OBJECTIVES = {"t": Objectives(ttft_s=1.5, tpot_s=0.1)}


def records(arrival: np.ndarray, met: np.ndarray, output_tokens: int = 20) -> RunRecords:
    """A run where each request meets both objectives or misses TTFT (first token 10 s late)."""
    n = arrival.size
    first = arrival + np.where(met, 0.2, 10.0)
    finish = first + 0.05 * (output_tokens - 1)
    nan = np.full(n, np.nan)
    return RunRecords(
        policy="p", tenant=np.array(["t"] * n), category=["chat"] * n, prompt_tokens=np.full(n, 100.0),
        max_tokens=np.full(n, 512.0), output_tokens=np.full(n, float(output_tokens)), arrival=arrival,
        dispatch=arrival.copy(), first_token=first, finish=finish, raw_estimate=nan, corrected_estimate=nan,
        admitted=np.ones(n, dtype=bool), status=["completed"] * n,
    )  # fmt: skip


def test_windows_are_whole_aligned_on_the_shock_and_inside_the_bounds():
    arrival = np.arange(0.0, 1000.0, 1.0)  # one request a second
    met = (arrival.astype(int) % 4) != 0  # 75 % met everywhere ...
    met[(arrival >= 500) & (arrival < 520)] = False  # ... none in the 20 s after the shock
    w = windows(arrival, met, shock_s=500.0, window_s=20.0, bounds=(105.0, 890.0))
    assert w.index[0] == -19 and w.index[-1] == 18  # [120, 140) ... [860, 880): whole windows only
    assert np.all(w.requests == 20)
    att = dict(zip(w.index.tolist(), w.attainment.tolist(), strict=True))
    assert att[0] == 0.0 and att[-1] == 0.75 and att[1] == 0.75
    assert w.pooled(0, 40) == pytest.approx(15 / 40)
    assert w.pooled(-math.inf, 0) == pytest.approx(0.75)


def test_recovery_is_the_window_from_which_every_later_one_is_within_tolerance():
    index = np.arange(-3, 6)
    within = np.array([-0.05, 0.0, 0.0, -0.1, -0.03, 0.01, -0.019, 0.0, 0.02])  # -3..-1 before the shock
    assert recovery_time(index, within, 60.0, 0.02) == 120.0  # windows 0 and 1 miss; from 2 on within
    assert recovery_time(index, np.zeros(9), 60.0) == 0.0  # never left
    late = within.copy()
    late[-1] = -0.05
    assert recovery_time(index, late, 60.0) == math.inf  # the last window still misses
    empty = within.copy()
    empty[4] = np.nan  # a window without requests neither misses nor counts
    assert recovery_time(index, empty, 60.0) == 0.0 + 60.0
    assert recovery_time(index, within + 0.5, 60.0) == 0.0  # above the oracle is not a miss
    assert misses_before(index, within) == pytest.approx(1 / 3)


def test_shock_figures_on_hand_made_runs():
    arrival = np.arange(0.0, 2000.0, 0.5)  # 120 requests per 60-s window
    shock = 1000.0
    oracle = np.ones(arrival.size, dtype=bool)
    corrected, uncorrected = oracle.copy(), oracle.copy()
    after = arrival - shock
    corrected[(after >= 0) & (after < 120) & (np.arange(arrival.size) % 10 == 0)] = False  # -10 points, 2 min
    uncorrected[(after >= 0) & (after < 600) & (np.arange(arrival.size) % 5 == 0)] = (
        False  # -20 points, 10 min
    )
    runs = {name: records(arrival, met) for name, met in
            (("p", corrected), ("p-uncorrected", uncorrected), ("p-oracle", oracle))}  # fmt: skip
    fig = shock_figures(runs, OBJECTIVES, shock, "p", "p-oracle", window_s=60.0, horizon_s=300.0)
    v = fig["variants"]
    assert v["p"]["recovery_s"] == 120.0 and v["p-uncorrected"]["recovery_s"] == 600.0
    assert v["p-oracle"]["recovery_s"] is None and v["p"]["vs_corrected_points"] is None
    assert v["p"]["before"] == 1.0 and v["p"]["horizon"] == pytest.approx(1 - 0.1 * 2 / 5)
    # Over 5 min: uncorrected misses 20 % throughout, corrected 10 % for 2 of the 5 windows.
    assert v["p-uncorrected"]["vs_corrected_points"] == pytest.approx(100 * (0.8 - 0.96))
    assert v["p-uncorrected"]["vs_corrected_area"] == pytest.approx(-20 * 5 + 10 * 2)
    assert v["p-oracle"]["vs_corrected_points"] == pytest.approx(4.0)
    assert v["p"]["after_horizon"] == 1.0 and v["p-uncorrected"]["after_horizon"] < 1.0


def test_tpot_misses_count_and_a_request_that_never_finished_misses():
    arrival = np.arange(0.0, 1000.0, 1.0)
    rec = records(arrival, np.ones(arrival.size, dtype=bool))
    slow = (arrival >= 560) & (arrival < 620)  # window 1: [shock + 60, shock + 120)
    rec.finish[slow] = rec.first_token[slow] + 0.2 * 19  # 0.2 s per token against a 0.1 s objective
    rec.finish[(arrival >= 620) & (arrival < 680)] = np.nan  # window 2: never finished (expired, failed)
    fig = shock_figures({"p": rec, "p-oracle": records(arrival, np.ones(arrival.size, dtype=bool))},
                        OBJECTIVES, 500.0, "p", "p-oracle")  # fmt: skip
    win = fig["variants"]["p"]["windows"]
    assert win[1] == 0.0 and win[2] == 0.0 and win[0] == 1.0 and win[3] == 1.0


def test_the_seed_mean_curve_averages_out_one_seed_windows():
    arrival = np.arange(0.0, 2000.0, 0.5)
    shock, after = 1000.0, np.arange(0.0, 2000.0, 0.5) - 1000.0
    oracle = np.ones(arrival.size, dtype=bool)
    per_seed = []
    for late in (0, 1):  # seed 0 misses 2.5 points in window 0, seed 1 in window 1
        met = oracle.copy()
        met[(after >= 60 * late) & (after < 60 * late + 60) & (np.arange(arrival.size) % 40 == 0)] = False
        runs = {"p": records(arrival, met), "p-oracle": records(arrival, oracle)}
        per_seed.append(shock_figures(runs, OBJECTIVES, shock, "p", "p-oracle"))
    combined = combine_seeds(per_seed, "p-oracle", tolerance=0.02)
    fig = combined["variants"]["p"]
    assert fig["recovery_s"] == (90.0, 60.0, 120.0)  # per seed: 60 and 120 s
    assert fig["mean_curve_recovery_s"] == 0.0  # 1.25 points on average: within 2
    assert fig["misses_before"] == 0.0
    assert "mean_curve_recovery_s" not in combined["variants"]["p-oracle"]


# -- the saas workload ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saas():
    return saas_workload(6000, seed=5, replicas=2, load=0.9, perf=PERF)


def test_saas_has_its_own_tenants_one_per_tier_with_their_tiers_objectives(saas):
    names = [t.name for t in saas.tenants]
    assert not set(names) & {p.spec.name for p in PROFILES}
    assert sorted(t.tier for t in saas.tenants) == [0, 1, 2, 3]
    objectives = core_config_for(saas, PERF).objectives()
    assert all(objectives[t.name] == tier_objectives(t.tier) for t in saas.tenants)
    assert saas.phase_starts == () and saas.shock_s is None  # stationary


def test_saas_follows_its_documented_shares_sizes_and_bursts(saas):
    items = saas.items
    assert all(a.arrival_s <= b.arrival_s for a, b in pairwise(items))
    assert all(1 <= it.output_tokens <= it.max_tokens and it.category in CATEGORIES for it in items)
    shares = Counter(it.tenant for it in items)
    for prof in SAAS_PROFILES:  # bursts make a share noisier: a few dozen bursts carry the harness's
        assert shares[prof.spec.name] / len(items) == pytest.approx(
            prof.share, abs=0.02 + 0.003 * prof.burst_size
        )
    agent_code = [it.output_tokens for it in items if it.tenant == "tool-agent" and it.category == "code"]
    assert 70 < float(np.median(agent_code)) < 110  # far below the code prior (384)
    # A burst is spread at its tenant's gap: the harness's 20 ms apart, the agent's 1.5 s.
    gaps: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    for it in items:
        if it.tenant in last:
            gaps.setdefault(it.tenant, []).append(it.arrival_s - last[it.tenant])
        last[it.tenant] = it.arrival_s
    assert Counter(round(g, 3) for g in gaps["eval-harness"]).most_common(1)[0][0] == 0.02
    assert Counter(round(g, 3) for g in gaps["tool-agent"]).most_common(1)[0][0] == 1.5
    half = len(items) // 2
    first, second = items[:half], items[half:]
    for tenant, cat in (("assistant", "chat"), ("tool-agent", "code")):
        a = mean(it.output_tokens for it in first if (it.tenant, it.category) == (tenant, cat))
        b = mean(it.output_tokens for it in second if (it.tenant, it.category) == (tenant, cat))
        assert b == pytest.approx(a, rel=0.2)


def test_saas_is_deterministic_per_seed():
    assert saas_workload(400, seed=1).items == saas_workload(400, seed=1).items
    assert saas_workload(400, seed=1).items != saas_workload(400, seed=2).items
