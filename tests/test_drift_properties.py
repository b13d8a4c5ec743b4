"""Property tests of the drift correction: it learns a constant bias, follows and holds a step, and a
shared tracker fed by replicas' batches follows a step like a single tracker.

Setting: one (tenant, category), raw estimate 100, one observation a second (so the 600 s default
half-life is 600 observations), true ratio observed/raw times mean-one lognormal noise of spread σ.
The tolerances come from the ratio of means' standard error, CV/√n with CV = √(e^σ² − 1):
at σ = 0.5 (CV 0.53) and the ≥ 300 effective observations of one half-life it is ≤ 3.1%, so 10% is
over 3 standard errors; after a declared shift the regime restarts from 6 to 32 observations, whence
the looser bound 40 observations after a step (σ ≤ 0.3: CV/√40 ≈ 5%, plus a few old observations the
change point may include).
"""

from __future__ import annotations

import math
import random

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from driftsched.core.config import DriftConfig
from driftsched.core.drift import DriftTracker

CONFIG = DriftConfig(prompt_buckets=False)
HALF_LIFE = int(CONFIG.half_life_s)  # observations, at one a second
ratios = st.floats(0.2, 5.0)
seeds = st.integers(0, 2**32 - 1)


def observe(tracker: DriftTracker, ratio: float, t: float, rng: random.Random, sigma: float) -> None:
    noise = rng.lognormvariate(-sigma * sigma / 2, sigma) if sigma else 1.0
    tracker.observe("a", "chat", 0, 100.0, 100.0, 100.0 * ratio * noise, t)


def factors_after_step(a: float, b: float, before: int, after: int, sigma: float, seed: int) -> list[float]:
    """`before` observations at ratio a, then `after` at b; the factor after each of the latter."""
    tracker, rng, out = DriftTracker(CONFIG), random.Random(seed), []
    for i in range(before + after):
        observe(tracker, a if i < before else b, float(i), rng, sigma)
        if i >= before:
            out.append(tracker.factor("a", "chat", 0, float(i)))
    return out


@settings(max_examples=25, deadline=None)
@given(ratio=ratios, sigma=st.floats(0.0, 0.5), seed=seeds)
def test_a_constant_ratio_is_learned(ratio, sigma, seed):
    final = factors_after_step(ratio, ratio, 0, HALF_LIFE, sigma, seed)[-1]
    assert abs(math.log(final / ratio)) < 0.1


@settings(max_examples=25, deadline=None)
@given(
    a=ratios,
    step=st.floats(math.log(2.0), math.log(4.0)),
    up=st.booleans(),
    sigma=st.floats(0.0, 0.3),
    seed=seeds,
)
def test_a_large_step_is_followed_and_held(a, step, up, sigma, seed):
    # A step of 2x to 4x is a shift (shift_ratio 1.5): within 40 observations the factor is near the
    # new level and stays there, never drifting back toward a mixture of the two levels.
    b = a * math.exp(step if up else -step)
    assume(0.1 <= b <= 10.0)  # well inside the factor's clamp [min_factor, max_factor]
    factors = factors_after_step(a, b, 300, 400, sigma, seed)
    assert max(abs(math.log(f / b)) for f in factors[39:]) < 0.25 * step
    assert abs(math.log(factors[-1] / b)) < 0.1


@settings(max_examples=20, deadline=None)
@given(a=ratios, step=st.floats(-0.2, 0.2), sigma=st.floats(0.0, 0.3), seed=seeds)
def test_a_small_step_converges_through_the_slow_sums(a, step, sigma, seed):
    # Below shift_ratio no shift is declared; the decayed sums forget the old level: after 4
    # half-lives its weight is 1/16 of the new level's, a bias of at most 0.2/16 in log terms.
    b = a * math.exp(step)
    final = factors_after_step(a, b, 300, 4 * HALF_LIFE, sigma, seed)[-1]
    assert abs(math.log(final / b)) < 0.08


@settings(max_examples=20, deadline=None)
@given(a=ratios, b=ratios, sigma=st.floats(0.0, 0.3), seed=seeds)
def test_any_step_converges_within_a_few_half_lives(a, b, sigma, seed):
    # Covers the steps between "small" and "large", which may or may not be declared shifts.
    final = factors_after_step(a, b, 300, 4 * HALF_LIFE, sigma, seed)[-1]
    assert abs(math.log(final / b)) < 0.08


@settings(max_examples=15, deadline=None)
@given(a=ratios, up=st.booleans(), replicas=st.integers(2, 4), sigma=st.floats(0.0, 0.3), seed=seeds)
def test_replica_batches_merged_each_second_follow_a_step(a, up, replicas, sigma, seed):
    # The service's path: requests spread over replicas, each pushing a batch tracker every second
    # (at most a few observations per node, so the shared tracker replays them), times interleaved.
    b = a * (2.0 if up else 0.5)
    shared, rng = DriftTracker(CONFIG), random.Random(seed)
    batches = [DriftTracker(CONFIG) for _ in range(replicas)]
    factors = []
    for i in range(700):
        t = i + rng.random()
        observe(batches[rng.randrange(replicas)], a if i < 300 else b, t, rng, sigma)
        for k in rng.sample(range(replicas), replicas):  # pushes arrive in any order
            shared.merge(batches[k])
            batches[k] = DriftTracker(CONFIG)
        if i >= 300:
            factors.append(shared.factor("a", "chat", 0, t))
    assert max(abs(math.log(f / b)) for f in factors[39:]) < 0.25 * math.log(2.0)
    assert abs(math.log(factors[-1] / b)) < 0.1
