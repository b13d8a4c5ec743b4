"""Block protocol of a live comparison: arrivals cut into short blocks, set-ups taking turns, and
every figure with a bootstrap interval over blocks (benchmarks/bench_vllm.py).

A host whose speed drifts by tens of percent within a run turns one long replay per set-up into
overloads of different depth for different set-ups. So the run is cut into *rounds*: round ``r`` is
one segment of the arrival stream, ``block_s`` seconds long, served once by every set-up in turn (the
order rotated per round, `round_orders`). Each (set-up, round) is one *block*; every set-up sees the
same arrivals in a round (paired), and early and late positions fall to every set-up alike.

Intervals. A figure pooled over a set-up's blocks (an attainment share, a percentile, a rate) gets a
percentile-bootstrap 95 % interval: rounds are drawn with replacement (seeded, ``resamples``), the
figure is recomputed over the blocks of the drawn rounds, and the 2.5th and 97.5th percentiles of
those draws bound it (`bootstrap`). A comparison of two set-ups draws the same rounds for both, so
its interval keeps the pairing. With fewer than `MIN_ROUNDS` rounds no interval is given.

Verdicts (`verdict`). A target is a bound on a figure. *met*: the whole interval meets it;
*missed*: the whole interval fails it; *unresolved*: the interval straddles it (or there is none).
A target with a looser `Target.ci_bound` (e.g. throughput >= 0.97x with the interval's lower end >=
0.95x) is met when the estimate meets `bound` and the interval's near end meets `ci_bound`, missed
when even the interval's far end fails `bound`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_ROUNDS = 2
"""Fewest rounds a bootstrap interval is drawn from (one round resamples to itself)."""
LEVEL = 0.95
VERDICTS = ("met", "missed", "unresolved")


# -- the schedule ------------------------------------------------------------------------------------


def round_orders(setups: Sequence[str], rounds: int) -> list[list[str]]:
    """The order the set-ups serve each round's segment in: rotated by one per round, so that over
    ``len(setups)`` rounds each set-up serves once in every position (a drifting host weighs on all)."""
    n = len(setups)
    return [[setups[(r + i) % n] for i in range(n)] for r in range(rounds)]


def rescale_arrivals(times: Sequence[float], rate: float, duration_s: float, start: int = 0) -> list[float]:
    """Arrival times for ``duration_s`` seconds at a mean of `rate` per second, shaped like `times`
    (a trace's timestamps, sorted): the ``n = round(rate * duration_s)`` arrivals from index `start`
    on, shifted to begin at 0 and stretched so that the next one would fall at ``duration_s``. The
    trace's bursts are kept, its mean rate becomes `rate`."""
    n = max(1, round(rate * duration_s))
    if start + n >= len(times):
        raise ValueError(f"the trace has {len(times)} arrivals; {n} from index {start} need "
                         f"{start + n + 1}: lower the rate, the rounds or the block length")
    t0, t_end = times[start], times[start + n]
    if not t_end > t0:
        raise ValueError(f"trace arrivals {start}..{start + n} span no time")
    factor = duration_s / (t_end - t0)
    return [(t - t0) * factor for t in times[start:start + n]]


def cut(arrivals: Sequence[float], block_s: float, rounds: int) -> list[list[float]]:
    """Arrival times (from 0) cut into `rounds` segments of `block_s` seconds, each from its own 0."""
    segments: list[list[float]] = [[] for _ in range(rounds)]
    for t in arrivals:
        r = int(t // block_s)
        if 0 <= r < rounds:
            segments[r].append(t - r * block_s)
    return segments


def window_tokens(first_s: float, done_s: float, tokens: int, start_s: float, end_s: float) -> float:
    """The share of a request's `tokens` generated within [start_s, end_s], taking them to stream at
    an even pace from its first token to its last (a closed loop's throughput over a fixed window,
    with no edge effect of whole requests falling in or out)."""
    if not (math.isfinite(first_s) and math.isfinite(done_s)):
        return 0.0
    if done_s <= first_s:
        return float(tokens) if start_s <= done_s <= end_s else 0.0
    overlap = min(done_s, end_s) - max(first_s, start_s)
    return tokens * max(0.0, overlap) / (done_s - first_s)


# -- intervals -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """A figure over all rounds and its bootstrap interval (None with too few rounds)."""

    value: float
    ci95: tuple[float, float] | None

    def to_json(self) -> dict[str, object]:
        return {"value": self.value, "ci95": list(self.ci95) if self.ci95 is not None else None}

    def text(self, fmt: str = "{:.2f}") -> str:
        """``value [lo, hi]``."""
        if self.ci95 is None:
            return _fmt(fmt, self.value)
        return f"{_fmt(fmt, self.value)} [{_fmt(fmt, self.ci95[0])}, {_fmt(fmt, self.ci95[1])}]"


def _fmt(fmt: str, value: float) -> str:
    return "n/a" if math.isnan(value) else ("inf" if math.isinf(value) else fmt.format(value))


def percentile(values: np.ndarray, q: float) -> float:
    """The `q`-th percentile, linear between neighbours; inf where a neighbour is inf (a request that
    never got there), NaN for no values."""
    if values.size == 0:
        return float("nan")
    ordered = np.sort(values)
    rank = q / 100 * (ordered.size - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    if math.isinf(ordered[hi]) or math.isinf(ordered[lo]):
        return float("inf")
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo))


def resamples(rounds: int, draws: int, seed: int) -> np.ndarray:
    """`draws` x `rounds` round indices drawn with replacement (seeded)."""
    return np.random.default_rng(seed).integers(0, rounds, size=(draws, rounds))


def bootstrap(stat: Callable[[Sequence[int]], float], rounds: int, draws: int = 1000, seed: int = 0,
              level: float = LEVEL) -> Estimate:
    """`stat` over all rounds, with the percentile interval of `stat` over `draws` resamples of the
    rounds. Draws where the figure is undefined (NaN: e.g. no request of a tenant drawn) are left out."""
    return bootstrap_many(lambda idx: [stat(idx)], rounds, draws, seed, level)[0]


def bootstrap_many(stats: Callable[[Sequence[int]], Sequence[float]], rounds: int, draws: int = 1000,
                   seed: int = 0, level: float = LEVEL) -> list[Estimate]:
    """`bootstrap` of several figures computed together from the same draws (`stats` returns them)."""
    values = list(stats(list(range(rounds))))
    if rounds < MIN_ROUNDS:
        return [Estimate(v, None) for v in values]
    drawn = np.array([list(stats(idx.tolist())) for idx in resamples(rounds, draws, seed)], dtype=float)
    tail = 100 * (1 - level) / 2
    out = []
    for value, column in zip(values, drawn.T, strict=True):
        column = column[~np.isnan(column)]
        ci = (percentile(column, tail), percentile(column, 100 - tail)) if column.size else None
        out.append(Estimate(value, ci))
    return out


# -- verdicts ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on a figure: ``figure >= bound`` (`higher_is_better`) or ``<=``. `ci_bound`: a looser
    bound the interval's near end must meet while the estimate meets `bound`."""

    bound: float
    higher_is_better: bool = True
    ci_bound: float | None = None

    def meets(self, value: float, bound: float | None = None) -> bool:
        bound = self.bound if bound is None else bound
        return value >= bound if self.higher_is_better else value <= bound

    def text(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        if self.ci_bound is None:
            return f"{sign} {self.bound:g}"
        end = "lower" if self.higher_is_better else "upper"
        return f"{sign} {self.bound:g}, interval's {end} end {sign} {self.ci_bound:g}"


def verdict(estimate: Estimate, target: Target) -> str:
    """"met", "missed" or "unresolved" (see the module docstring); never from the estimate alone."""
    if estimate.ci95 is None or any(math.isnan(v) for v in estimate.ci95):
        return "unresolved"
    lo, hi = estimate.ci95
    near, far = (lo, hi) if target.higher_is_better else (hi, lo)
    if not target.meets(far):
        return "missed"
    if target.ci_bound is None:
        return "met" if target.meets(near) else "unresolved"
    return "met" if target.meets(estimate.value) and target.meets(near, target.ci_bound) else "unresolved"


__all__ = [
    "LEVEL",
    "MIN_ROUNDS",
    "VERDICTS",
    "Estimate",
    "Target",
    "bootstrap",
    "bootstrap_many",
    "cut",
    "percentile",
    "resamples",
    "rescale_arrivals",
    "round_orders",
    "verdict",
    "window_tokens",
]
