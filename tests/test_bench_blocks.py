"""The block protocol's arithmetic (driftsched.bench.blocks, driftsched.bench.block_figures): the
rounds' order, the arrivals' rescaling and cutting, the bootstrap interval, the verdict rule and the
saturation ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftsched.bench import block_figures as bf
from driftsched.bench.blocks import (
    Estimate,
    Target,
    bootstrap,
    cut,
    percentile,
    rescale_arrivals,
    round_orders,
    verdict,
    window_tokens,
)

# -- the schedule ------------------------------------------------------------------------------------


def test_every_setup_serves_every_round_once_and_every_position_once_over_as_many_rounds():
    setups = ["a", "b", "c", "d"]
    orders = round_orders(setups, 8)
    assert all(sorted(order) == setups for order in orders)
    for position in range(4):
        column = [order[position] for order in orders[:4]]
        assert sorted(column) == setups  # early and late alike
    assert orders[0] == setups and orders[1] == ["b", "c", "d", "a"] and orders[4] == setups


def test_rescaled_arrivals_keep_the_bursts_and_take_the_mean_rate():
    trace = [0.0, 0.1, 0.2, 5.0, 5.1, 10.0, 20.0, 20.5, 21.0, 40.0]
    times = rescale_arrivals(trace, rate=2.0, duration_s=3.0, start=1)  # 6 arrivals, trace[1..7)
    assert len(times) == 6 and times[0] == 0.0
    factor = 3.0 / (trace[7] - trace[1])  # the 7th would fall at the end: mean rate 6 / 3 s
    assert times == pytest.approx([(t - 0.1) * factor for t in trace[1:7]])
    gaps = np.diff(times)
    assert gaps[0] / gaps[2] == pytest.approx((0.2 - 0.1) / (5.1 - 5.0))  # burst shape kept
    with pytest.raises(ValueError, match="lower the rate"):
        rescale_arrivals(trace, rate=10.0, duration_s=3.0)


def test_arrivals_are_cut_into_segments_each_from_its_own_start():
    segments = cut([0.5, 9.9, 10.0, 12.5, 31.0, 45.0], block_s=10.0, rounds=4)
    assert segments == [[0.5, 9.9], [0.0, 2.5], [], [1.0]]  # 45 s lies past the last round


def test_a_closed_loops_tokens_count_pro_rata_inside_the_window():
    assert window_tokens(2.0, 4.0, 100, 0.0, 10.0) == 100  # wholly inside
    assert window_tokens(8.0, 12.0, 100, 0.0, 10.0) == pytest.approx(50)  # half of it streamed by 10 s
    assert window_tokens(1.0, 3.0, 100, 2.0, 10.0) == pytest.approx(50)  # half before the warm-up ends
    assert window_tokens(11.0, 12.0, 100, 0.0, 10.0) == 0
    assert window_tokens(math.nan, math.nan, 100, 0.0, 10.0) == 0  # a failed request streamed nothing


# -- intervals ---------------------------------------------------------------------------------------


def test_percentile_is_linear_between_neighbours_and_infinite_where_a_request_never_came():
    values = np.array([3.0, 1.0, 2.0, 4.0])
    for q in (0, 25, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile(np.array([1.0, 2.0, np.inf]), 50) == 2.0
    assert percentile(np.array([1.0, 2.0, np.inf]), 99) == math.inf
    assert math.isnan(percentile(np.array([]), 50))


def test_the_bootstrap_interval_of_a_mean_matches_its_normal_approximation():
    values = np.arange(10.0)  # one figure per round; the mean's standard error is sd / sqrt(10)
    est = bootstrap(lambda idx: float(values[list(idx)].mean()), 10, draws=4000, seed=3)
    se = values.std() / math.sqrt(10)
    assert est.value == 4.5 and est.ci95 is not None
    assert est.ci95[0] == pytest.approx(4.5 - 1.96 * se, abs=0.3)
    assert est.ci95[1] == pytest.approx(4.5 + 1.96 * se, abs=0.3)
    again = bootstrap(lambda idx: float(values[list(idx)].mean()), 10, draws=4000, seed=3)
    assert again == est  # seeded


def test_the_bootstrap_collapses_on_identical_rounds_and_gives_no_interval_for_one():
    assert bootstrap(lambda idx: 7.0, 5, draws=100).ci95 == (7.0, 7.0)
    assert bootstrap(lambda idx: 7.0, 1, draws=100) == Estimate(7.0, None)


def test_undefined_draws_are_left_out_of_the_interval():
    def share(idx):  # a tenant seen only in round 0: undefined where it is not drawn
        return 1.0 if 0 in idx else math.nan

    est = bootstrap(share, 4, draws=200, seed=1)
    assert est.ci95 == (1.0, 1.0)


# -- verdicts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ci", "expected"), [
    ((1.01, 1.20), "met"), ((1.00, 1.20), "met"), ((0.80, 0.99), "missed"), ((0.95, 1.05), "unresolved"),
])
def test_a_lower_bound_is_met_missed_or_unresolved_by_the_whole_interval(ci, expected):
    assert verdict(Estimate(1.1, ci), Target(1.0)) == expected


@pytest.mark.parametrize(("ci", "expected"), [
    ((0.001, 0.004), "met"), ((0.006, 0.030), "missed"), ((-0.010, 0.012), "unresolved"),
])
def test_an_upper_bound_is_judged_from_the_interval_not_the_point(ci, expected):
    point = 0.0  # the same point in every case: only the interval decides
    assert verdict(Estimate(point, ci), Target(0.005, higher_is_better=False)) == expected


@pytest.mark.parametrize(("value", "ci", "expected"), [
    (0.98, (0.96, 1.00), "met"),
    (0.98, (0.93, 1.02), "unresolved"),  # the point clears 0.97 but the interval dips under 0.95
    (0.96, (0.955, 0.975), "unresolved"),  # the interval clears 0.95 but the point is under 0.97
    (0.90, (0.88, 0.96), "missed"),  # even the interval's top is under 0.97
])
def test_the_saturation_target_holds_the_point_to_097_and_the_lower_end_to_095(value, ci, expected):
    assert verdict(Estimate(value, ci), Target(0.97, ci_bound=0.95)) == expected


def test_no_interval_is_unresolved():
    assert verdict(Estimate(2.0, None), Target(1.0)) == "unresolved"
    assert verdict(Estimate(2.0, (math.nan, math.nan)), Target(1.0)) == "unresolved"


# -- figures over blocks -----------------------------------------------------------------------------


def _block(setup, round_, tenants, ttft, met, tokens, length_s=10.0):
    return bf.Block(setup, round_, length_s, np.array(tenants), np.array(ttft, dtype=float),
                    np.array(met), np.array(met), np.array(tokens, dtype=float))


def test_figures_pool_the_drawn_blocks_and_goodput_runs_on_the_segments_clock():
    blocks = [_block("s", 0, ["a", "b"], [0.1, 0.3], [True, False], [100, 50]),
              _block("s", 1, ["a", "a"], [0.2, math.inf], [True, False], [10, 20])]
    assert bf.figure("slo_both", blocks, [0, 1], None) == 0.5
    assert bf.figure("slo_both", blocks, [0, 1], "a") == pytest.approx(2 / 3)
    assert bf.figure("slo_both", blocks, [1, 1], "b") != bf.figure("slo_both", blocks, [1, 1], "b")  # NaN
    assert bf.figure("goodput_tokens", blocks, [0, 1], None) == pytest.approx(110 / 20)
    assert bf.figure("goodput_tokens", blocks, [0, 0], None) == pytest.approx(200 / 20)  # counted twice
    assert bf.figure("ttft_p99", blocks, [0, 1], "a") == math.inf  # the one that never came
    with pytest.raises(ValueError, match="choose from"):
        bf.figure("ttft_p42", blocks, [0], None)


def _throughput(setup, tokens):
    return [bf.Throughput(setup, r, 10.0, t) for r, t in enumerate(tokens)]


def test_the_saturation_ratio_is_of_sums_over_the_same_rounds_and_its_interval_keeps_the_pairing():
    host = [4000.0, 6000.0, 5000.0, 7000.0, 3000.0]  # a host whose speed swings from round to round
    blocks = {"vllm-fcfs": _throughput("vllm-fcfs", host),
              "driftsched-fifo": _throughput("driftsched-fifo", [0.96 * t for t in host])}
    sat = bf.saturation(blocks, draws=500, seed=0)
    fifo = sat["driftsched-fifo"]
    assert fifo["tokens_per_s"] == pytest.approx(0.96 * sum(host) / 50)
    assert fifo["ratio_to_vllm_fcfs"] == pytest.approx(0.96)
    assert fifo["ratio_ci95"] == pytest.approx([0.96, 0.96])  # paired: the swings cancel
    lo, hi = fifo["tokens_per_s_ci95"]
    assert hi - lo > 100  # unpaired, the host's swings widen the rate's own interval
    assert sat["vllm-fcfs"]["ratio_to_vllm_fcfs"] == 1.0
    # the ratio of sums, not the mean of ratios: a round twice as long weighs twice
    uneven = {"vllm-fcfs": _throughput("vllm-fcfs", [1000.0, 3000.0]),
              "driftsched-fifo": _throughput("driftsched-fifo", [500.0, 3000.0])}
    uneven_fifo = bf.saturation(uneven, 100, 0)["driftsched-fifo"]
    assert uneven_fifo["ratio_to_vllm_fcfs"] == pytest.approx(3500 / 4000)


def test_verdict_rows_cover_the_targets_whose_setups_ran():
    rounds = 4

    def blocks(setup, ttft, met):
        return [_block(setup, r, ["interactive", "batch", "free"], [ttft] * 3, [met] * 3, [100] * 3)
                for r in range(rounds)]

    main = {"driftsched-default": blocks("driftsched-default", 0.5, True),
            "vllm-fcfs": blocks("vllm-fcfs", 2.0, False), "vllm-priority": blocks("vllm-priority", 1.0, True)}
    low = {"driftsched-fifo": blocks("driftsched-fifo", 0.101, True),
           "vllm-fcfs": blocks("vllm-fcfs", 0.1, True)}
    sat = {"driftsched-default": _throughput("driftsched-default", [900.0, 1000.0, 1100.0, 950.0]),
           "vllm-fcfs": _throughput("vllm-fcfs", [1000.0, 1000.0, 1000.0, 1000.0])}
    rows = bf.verdict_rows(main, low, sat, ["interactive", "batch", "free"], draws=200, seed=0)
    by = {(r["target"], r["versus"], r["tenant"], r["figure"][:8]): r for r in rows}
    assert by[("saturation throughput", "vllm-fcfs", "all", "tokens/s")]["verdict"] == "unresolved"
    assert "driftsched-fifo" not in {r["setup"] for r in rows if r["target"] == "saturation throughput"}
    assert by[("low-load overhead", "vllm-fcfs", "all", "TTFT p50")]["verdict"] == "met"  # 1 ms slower
    assert by[("interactive TTFT", "vllm-priority", "interactive", "TTFT p99")]["value"] == pytest.approx(0.5)
    assert by[("interactive TTFT", "vllm-priority", "interactive", "TTFT p99")]["verdict"] == "met"
    assert {r["verdict"] for r in rows if r["target"] == "SLO attainment"} == {"met"}
    goodput = {r["versus"]: r for r in rows if r["target"] == "goodput"}
    assert goodput["vllm-fcfs"]["verdict"] == "met"  # vllm-fcfs met nothing: goodput 0, ratio inf
    assert goodput["vllm-priority"]["value"] == 1.0 and goodput["vllm-priority"]["verdict"] == "met"
    assert all(r["verdict"] in ("met", "missed", "unresolved") for r in rows)
