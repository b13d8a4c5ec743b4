"""The QoS protocol's arithmetic (`benchmarks/bench_slo.py`): verdicts from intervals, capacity at SLO."""

from __future__ import annotations

import pytest

from benchmarks.bench_slo import capacity, verdict


def test_a_verdict_needs_the_whole_interval_on_one_side():
    at_least_one = lambda v: v >= 1.0  # noqa: E731
    assert verdict({"value": 1.2, "ci95": [1.05, 1.35], "n": 5}, at_least_one) == "met"
    assert verdict({"value": 0.9, "ci95": [0.8, 0.99], "n": 5}, at_least_one) == "missed"
    assert verdict({"value": 1.1, "ci95": [0.95, 1.25], "n": 5}, at_least_one) == "unresolved"
    assert verdict({"value": 1.1, "ci95": None, "n": 1}, at_least_one) == "met (1 seed)"


def _grid(worst_by_load: dict[float, float]) -> dict[float, dict]:
    """One policy whose worst tenant meets both objectives `worst` of the time at each load."""
    return {
        load: {"policies": {"p": {"per_tenant": {"a": {"slo": {"both": worst}},
                                                 "b": {"slo": {"both": 1.0}}}}}}
        for load, worst in worst_by_load.items()
    }


def test_capacity_at_slo_interpolates_where_the_worst_tenant_crosses_90_percent():
    assert capacity(_grid({0.7: 0.98, 0.8: 0.94, 0.9: 0.86}), "p") == pytest.approx(0.85)
    assert capacity(_grid({0.7: 0.98, 0.8: 0.95}), "p") == 0.8  # never below: the grid's top
    assert capacity(_grid({0.5: 0.45, 0.6: 0.3}), "p") == pytest.approx(0.25)  # below the grid
