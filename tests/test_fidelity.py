"""The live-against-simulator verdict: makespan and overall attainment within 10 %, per policy and seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftsched.bench.fidelity import (
    TOLERANCE,
    agrees,
    by_seed,
    compare,
    format_verdicts,
    verdict,
    verdict_markdown,
)
from driftsched.core.slo import Objectives
from driftsched.sim.records import RunRecords
from driftsched.sim.report import policy_summary

OBJECTIVES = {"t": Objectives(ttft_s=1.0, tpot_s=0.1)}


def run(policy: str, ttft: list[float], stretch: float = 1.0) -> RunRecords:
    """One tenant, a request a second, 11 tokens each at 0.05 s per token (meets TPOT);
    request i's first token `ttft[i]` after its arrival; every time multiplied by `stretch`."""
    n = len(ttft)
    arrival = np.arange(n, dtype=float) * stretch
    first = arrival + np.array(ttft) * stretch
    finish = first + 0.5 * stretch
    nan = np.full(n, np.nan)
    return RunRecords(
        policy=policy, tenant=np.array(["t"] * n), category=["chat"] * n,
        prompt_tokens=np.full(n, 10.0), max_tokens=np.full(n, 64.0), output_tokens=np.full(n, 11.0),
        arrival=arrival, dispatch=nan, first_token=first, finish=finish, raw_estimate=nan,
        corrected_estimate=nan, admitted=np.ones(n, dtype=bool), status=["completed"] * n,
    )


def summaries(live: RunRecords, simulated: RunRecords) -> dict[str, dict[str, float]]:
    live_summary = {live.policy: policy_summary(live, OBJECTIVES)}
    return compare(live_summary, {simulated.policy: policy_summary(simulated, OBJECTIVES)})[live.policy]


def test_a_live_run_within_ten_percent_of_the_simulated_one_is_met():
    simulated = run("fifo", [0.5] * 20)  # every request meets both objectives
    late = [0.5] * 20
    late[5] = 1.5  # one of the 16 requests in the steady window (arrivals 2..17) misses its TTFT live
    row = summaries(run("fifo", late, stretch=1.05), simulated)
    assert row["makespan"]["simulated"] == pytest.approx(20.0)  # first arrival to last finish
    assert row["makespan"]["ratio"] == pytest.approx(1.05)
    assert row["attainment"]["simulated"] == 1.0
    assert row["attainment"]["ratio"] == pytest.approx(15 / 16)  # 0.9375: within 10 %
    assert row["attainment"]["points"] == pytest.approx(-100 / 16)
    assert row["verdict"] == "met"


def test_a_live_run_outside_ten_percent_on_either_figure_is_missed():
    simulated = run("fifo", [0.5] * 20)
    slow = summaries(run("fifo", [0.5] * 20, stretch=1.12), simulated)  # TPOT still met at 0.056 s/token
    assert slow["makespan"]["ratio"] == pytest.approx(1.12) and slow["attainment"]["ratio"] == 1.0
    assert slow["verdict"] == "missed"
    late = [0.5] * 20
    late[4:7] = [2.0, 2.0, 2.0]  # 3 of 16 miss: attainment 0.8125 of the simulator's
    missed = summaries(run("fifo", late), simulated)
    assert missed["makespan"]["ratio"] == pytest.approx(1.0)
    assert missed["attainment"]["ratio"] == pytest.approx(13 / 16)
    assert missed["verdict"] == "missed"


def test_the_band_is_closed_and_an_undefined_ratio_never_agrees():
    assert agrees(1.0 + TOLERANCE) and agrees(1.0 - TOLERANCE) and agrees(110 / 100) and agrees(0.9 / 1.0)
    assert not agrees(1.1001) and not agrees(0.8999)
    assert not agrees(math.nan) and not agrees(math.inf)
    row = {"makespan": {"ratio": 1.0}, "attainment": {"ratio": math.nan}}  # simulated attainment 0
    assert verdict(row) == "missed"
    assert verdict({"makespan": {"ratio": 1.08}, "attainment": {"ratio": 0.93}}) == "met"
    assert verdict({"makespan": {"ratio": 1.08}, "attainment": {"ratio": 0.93}}, tolerance=0.05) == "missed"
    # a summary without SLO figures (no objectives) gives NaN, not an error
    row = compare({"p": {"e2e_s": {"p50": 1, "p99": 2}, "ttft_s": {"p50": 1}}},
                  {"p": {"e2e_s": {"p50": 1, "p99": 2}, "ttft_s": {"p50": 1}}})["p"]
    assert math.isnan(row["attainment"]["ratio"]) and row["verdict"] == "missed"


def _row(makespan: float, attainment: float) -> dict[str, object]:
    row: dict[str, object] = {
        "makespan": {"live": 100 * makespan, "simulated": 100.0, "ratio": makespan},
        "attainment": {"live": 0.9 * attainment, "simulated": 0.9, "ratio": attainment,
                       "points": 90 * (attainment - 1)},
    }
    row["verdict"] = verdict(row)
    return row


def test_seeds_group_per_policy_and_every_seed_must_meet():
    grouped = by_seed({
        2: {"fifo": _row(1.02, 0.97), "slo": _row(1.03, 0.85)},
        1: {"fifo": _row(0.99, 1.01), "slo": _row(1.01, 1.0)},
    })
    assert [s["seed"] for s in grouped["fifo"]["seeds"]] == [1, 2]  # in seed order
    assert grouped["fifo"]["verdict"] == "met" and grouped["fifo"]["met"] == 2
    assert grouped["slo"]["verdict"] == "missed" and grouped["slo"]["met"] == 1
    assert [s["verdict"] for s in grouped["slo"]["seeds"]] == ["met", "missed"]
    text = format_verdicts(grouped, "t").splitlines()
    assert text[0] == "t" and text[-1] == "slo: missed (1 of 2 seeds)"
    first = ["fifo", "1", "99.0", "100.0", "0.990", "90.9%", "90.0%", "1.010", "+0.9", "met"]
    assert text[3].split() == first
    page = verdict_markdown(grouped)
    assert "| slo | 2 | 103.0 | 100.0 | 1.030 | 76.5% | 90.0% | 0.850 | -13.5 | missed |" in page
    assert "**fifo** met (2 of 2 seeds); **slo** missed (1 of 2 seeds)" in page
