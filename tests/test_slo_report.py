"""SLO attainment and goodput on hand-made runs (`driftsched.sim.attainment`, `driftsched.sim.report`), and
the paired comparison with FIFO over seeds (`driftsched.sim.seeds.versus`). Fast, no Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftsched.core.slo import Objectives
from driftsched.sim.attainment import in_window, outcome, slo_flags, steady_window
from driftsched.sim.records import RunRecords
from driftsched.sim.report import policy_summary, summarize
from driftsched.sim.seeds import aggregate, mean_ci, t975, versus

NAN = float("nan")
GOLD = Objectives(ttft_s=1.0, tpot_s=0.1)
OBJECTIVES = {"gold": GOLD, "free": Objectives(ttft_s=10.0, tpot_s=0.5, e2e_s=30.0)}


def run(rows: list[tuple], policy: str = "p", **own: np.ndarray) -> RunRecords:
    """Records from (tenant, arrival, first token, finish, output tokens, status) rows; a request is
    admitted unless its status is a refusal."""
    n = len(rows)

    def col(k: int) -> np.ndarray:
        return np.array([r[k] for r in rows], dtype=float)

    status = [r[5] for r in rows]
    return RunRecords(
        policy=policy,
        tenant=np.array([r[0] for r in rows]),
        category=["chat"] * n,
        prompt_tokens=np.full(n, 10.0),
        max_tokens=np.full(n, 512.0),
        output_tokens=col(4),
        arrival=col(1),
        dispatch=col(2),
        first_token=col(2),
        finish=col(3),
        raw_estimate=np.full(n, 50.0),
        corrected_estimate=np.full(n, 50.0),
        admitted=np.array([s in ("completed", "expired", "unfinished") for s in status]),
        status=status,
        **own,
    )


# -- one request at a time ---------------------------------------------------------------------------


def test_ttft_is_met_up_to_and_including_the_objective():
    rec = run([
        ("gold", 0.0, 1.0, 2.0, 11, "completed"),  # TTFT 1.0 s = objective: met
        ("gold", 0.0, 1.01, 2.0, 11, "completed"),  # 1.01 s: missed
        ("gold", 5.0, 5.2, 6.0, 11, "completed"),  # 0.2 s: met
    ])
    ttft, tpot = slo_flags(rec, OBJECTIVES)
    assert ttft.tolist() == [True, False, True]
    assert tpot.tolist() == [True, True, True]  # (2.0 - 1.0) / 10 = 0.1 s per token: met at the limit


def test_tpot_is_the_time_between_tokens_after_the_first():
    rec = run([
        ("gold", 0.0, 0.5, 0.5 + 0.1 * 20, 21, "completed"),  # 20 gaps of 0.1 s: met
        ("gold", 0.0, 0.5, 0.5 + 0.11 * 20, 21, "completed"),  # 0.11 s: missed
        ("gold", 0.0, 3.0, 3.5, 21, "completed"),  # fast stream after a late start: TPOT met, TTFT not
    ])
    ttft, tpot = slo_flags(rec, OBJECTIVES)
    assert tpot.tolist() == [True, False, True]
    assert (ttft & tpot).tolist() == [True, False, False]


def test_a_one_token_answer_meets_tpot_exactly_when_it_meets_ttft():
    rec = run([
        ("gold", 0.0, 0.4, 0.4, 1, "completed"),
        ("gold", 0.0, 2.0, 2.0, 1, "completed"),
    ])
    ttft, tpot = slo_flags(rec, OBJECTIVES)
    assert ttft.tolist() == tpot.tolist() == [True, False]


def test_refused_expired_and_failed_requests_miss_both():
    rec = run([
        ("gold", 0.0, NAN, NAN, 10, "tenant_request_quota"),  # rejected
        ("gold", 0.0, NAN, NAN, 10, "system_overloaded"),  # shed
        ("gold", 0.0, NAN, NAN, 10, "expired"),
        ("gold", 0.0, 0.2, NAN, 10, "unfinished"),  # first token in time, never finished
    ])
    ttft, tpot = slo_flags(rec, OBJECTIVES)
    assert not ttft.any() and not tpot.any()


def test_a_requests_own_objective_overrides_its_tenants_and_nan_keeps_the_tenants():
    rows = [("gold", 0.0, 0.8, 1.8, 11, "completed")] * 2  # TTFT 0.8 s, TPOT 0.1 s
    rec = run(rows, ttft_slo_s=np.array([0.5, NAN]), tpot_slo_s=np.array([NAN, 0.05]))
    ttft, tpot = slo_flags(rec, OBJECTIVES)
    assert ttft.tolist() == [False, True] and tpot.tolist() == [True, False]


def test_a_tenant_without_objectives_is_named():
    with pytest.raises(ValueError, match=r"no latency objectives for tenants \['bronze'\]"):
        slo_flags(run([("bronze", 0.0, 0.1, 0.2, 2, "completed")]), OBJECTIVES)


@pytest.mark.parametrize(
    ("status", "admitted", "completed", "expected"),
    [
        ("completed", True, True, "completed"),
        ("expired", True, False, "expired"),
        ("http_504:queue_timeout", False, False, "expired"),
        ("tenant_request_quota", False, False, "rejected"),
        ("invalid_request", False, False, "rejected"),
        ("http_429:tenant_token_quota", False, False, "rejected"),
        ("http_401:invalid_api_key", False, False, "rejected"),
        ("tenant_queue_full", False, False, "rejected"),
        ("system_overloaded", False, False, "shed"),
        ("slo_unattainable", False, False, "shed"),  # any other refusal turns a request away for load
        ("http_429:tenant_queue_full", False, False, "rejected"),
        ("http_503:system_overloaded", False, False, "shed"),
        ("http_502:replica_failed", False, False, "error"),
        ("timeout", True, False, "error"),
        ("unfinished", True, False, "error"),
    ],
)
def test_each_status_ends_as_one_outcome(status, admitted, completed, expected):
    assert outcome(status, admitted, completed) == expected


# -- a run: the steady window, shares, attainment, goodput -----------------------------------------------


def windowed_run() -> RunRecords:
    """Arrivals over [0, 100] s: the steady window is [10, 90] s. Inside it, gold sends four requests
    (two meet both objectives, one misses TTFT, one is shed) and free two (one meets both and finishes
    long after 90 s, one expires). Outside it, gold's requests at 0, 5 and 100 s all meet both."""
    return run([
        ("gold", 0.0, 0.1, 1.0, 10, "completed"),  # before the window
        ("gold", 5.0, 5.1, 6.0, 10, "completed"),  # before the window
        ("gold", 10.0, 10.5, 11.0, 11, "completed"),  # met both (window starts at 10 s, included)
        ("gold", 20.0, 20.5, 21.5, 21, "completed"),  # met both
        ("gold", 30.0, 33.0, 34.0, 11, "completed"),  # TTFT 3 s: missed
        ("gold", 40.0, NAN, NAN, 11, "system_overloaded"),  # shed
        ("free", 50.0, 59.0, 150.0, 201, "completed"),  # TTFT 9 s, TPOT 91 / 200 s: met, finishes after 90 s
        ("free", 60.0, NAN, NAN, 50, "expired"),
        ("gold", 100.0, 100.1, 101.0, 10, "completed"),  # after the window
    ])


def test_the_steady_window_leaves_out_early_and_late_arrivals():
    rec = windowed_run()
    window = steady_window(rec)
    assert (window.start_s, window.end_s, window.length_s) == (10.0, 90.0, 80.0)
    assert in_window(rec, window).tolist() == [False, False, True, True, True, True, True, True, False]
    summary = policy_summary(rec, OBJECTIVES)
    assert summary["window"] == {"start_s": 10.0, "end_s": 90.0, "requests": 6}
    assert summary["completed"] == 7 and summary["shed"] == 1 and summary["expired"] == 1  # whole run


def test_attainment_and_goodput_over_the_window():
    summary = policy_summary(windowed_run(), OBJECTIVES)
    gold, free = summary["per_tenant"]["gold"], summary["per_tenant"]["free"]
    assert gold["slo"] == {"ttft": 0.5, "tpot": 0.75, "both": 0.5}  # 4 sent in the window; shed misses
    assert free["slo"]["both"] == 0.5 and free["slo"]["e2e"] == 0.0  # 100 s end to end > 30 s
    assert summary["slo"]["both"] == pytest.approx(3 / 6)
    assert "e2e" in summary["slo"] and summary["slo"]["e2e"] == 0.0  # judged over free only
    # goodput: requests meeting both (3) and their output tokens (11 + 21 + 201) per second of the
    # window's 80 s, though one of them finished 60 s after it closed
    assert summary["goodput"]["requests_per_s"] == pytest.approx(3 / 80)
    assert summary["goodput"]["tokens_per_s"] == pytest.approx(233 / 80)
    assert gold["goodput"]["tokens_per_s"] == pytest.approx(32 / 80)
    assert gold["shed_share"] == 0.25 and gold["expired_share"] == 0.0
    assert free["expired_share"] == 0.5 and summary["completed_share"] == pytest.approx(4 / 6)


def test_latencies_over_the_window_count_a_request_that_never_started_as_infinitely_late():
    summary = policy_summary(windowed_run(), OBJECTIVES)
    free = summary["per_tenant"]["free"]
    assert free["ttft_s"]["p50"] == math.inf and free["e2e_s"]["p99"] == math.inf  # 1 of its 2 expired
    gold = summary["per_tenant"]["gold"]
    assert gold["ttft_s"]["p50"] == pytest.approx(0.5)  # the shed request is in the shares, not here
    assert gold["tpot_s"]["p50"] == pytest.approx(0.05)  # 0.05, 0.05 and 0.1 s per token


def test_without_objectives_there_is_no_attainment_and_no_window_means_every_request():
    summary = policy_summary(windowed_run(), window=None)
    assert "slo" not in summary and "goodput" not in summary
    assert summary["window"]["requests"] == 9


# -- every policy against FIFO over seeds ----------------------------------------------------------


def seed_summary(seed: int, fifo_goodput: float, bounded_goodput: float, gold_points: float) -> dict:
    """A per-seed summary of fifo and bounded, shaped like `summarize`'s."""

    def policy(goodput: float, both: float, p99: float | None) -> dict:
        return {
            "goodput": {"tokens_per_s": goodput, "requests_per_s": goodput / 100},
            "ttft_s": {"p99": p99},
            "e2e_s": {"p99": p99},
            "per_tenant": {"gold": {"slo": {"both": both}}},
        }

    return {"seed": seed, "policies": {
        "fifo": policy(fifo_goodput, 0.5, 10.0),
        "bounded": policy(bounded_goodput, 0.5 + gold_points / 100, None if seed == 3 else 5.0),
    }}


def test_the_ratio_to_fifo_is_paired_by_seed_with_a_student_t_interval():
    seeds = [seed_summary(1, 100.0, 110.0, 2.0), seed_summary(2, 200.0, 240.0, 4.0),
             seed_summary(3, 50.0, 65.0, 6.0)]  # ratios 1.1, 1.2, 1.3; gold +2, +4, +6 points
    vs = versus(seeds)["bounded"]
    ratio = vs["goodput_tokens_ratio"]
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2) x standard deviation / sqrt(n)
    assert ratio["value"] == pytest.approx(1.2) and ratio["n"] == 3
    assert ratio["ci95"] == pytest.approx([1.2 - half, 1.2 + half])
    points = vs["slo_both_points"]["gold"]
    assert points["value"] == pytest.approx(4.0)
    assert points["ci95"] == pytest.approx([4.0 - 4.303 * 2 / math.sqrt(3), 4.0 + 4.303 * 2 / math.sqrt(3)])
    # seed 3's p99 is null (inf: censored by expired requests), so its ratio to FIFO's is inf
    assert vs["ttft_p99_ratio"] == {"value": math.inf, "ci95": None, "n": 3}
    assert "fifo" not in versus(seeds)


def test_one_seed_gives_the_ratio_without_an_interval_and_undefined_ratios_are_left_out():
    assert versus([seed_summary(1, 100.0, 110.0, 2.0)])["bounded"]["goodput_tokens_ratio"] == {
        "value": pytest.approx(1.1), "ci95": None, "n": 1}
    assert mean_ci([math.nan, 2.0, 4.0])["n"] == 2
    empty = mean_ci([])
    assert math.isnan(empty["value"]) and empty["ci95"] is None and empty["n"] == 0
    assert t975(4) == 2.776 and t975(60) == pytest.approx(2.000, abs=1e-3)
    assert t975(120) == pytest.approx(1.980, abs=1e-3)


def test_aggregate_carries_the_paired_comparison_and_summarize_one_seeds():
    seeds = [seed_summary(s, 100.0, 100.0 + 10 * s, 1.0) for s in (1, 2)]
    combined = aggregate(seeds)
    assert combined["vs_fifo"]["bounded"]["goodput_tokens_ratio"]["n"] == 2
    assert combined["median"]["vs_fifo"] is combined["vs_fifo"]
    one = summarize([windowed_run(), _renamed(windowed_run(), "fifo")], {}, objectives=OBJECTIVES)
    assert one["vs_fifo"]["p"]["goodput_tokens_ratio"]["value"] == pytest.approx(1.0)
    assert one["objectives"]["free"] == {"ttft_s": 10.0, "tpot_s": 0.5, "e2e_s": 30.0}
    assert one["window"] == {
        "from_share": 0.1, "to_share": 0.9, "start_s": 10.0, "end_s": 90.0, "requests": 6}


def _renamed(rec: RunRecords, policy: str) -> RunRecords:
    rec.policy = policy
    return rec


def test_a_request_refused_for_its_tenants_own_quota_is_not_judged_but_a_shed_one_misses():
    rows = [("gold", float(t), t + 0.2, t + 1.2, 11, "completed") for t in range(4)]
    rows[1] = ("gold", 1.0, NAN, NAN, 11, "tenant_token_quota")  # over its own quota: not judged
    rows[2] = ("gold", 2.0, NAN, NAN, 11, "system_overloaded")  # shed for load: a miss
    summary = policy_summary(run(rows), OBJECTIVES, window=None)
    assert summary["slo"]["both"] == pytest.approx(2 / 3)
    assert summary["rejected_share"] == summary["shed_share"] == pytest.approx(1 / 4)
