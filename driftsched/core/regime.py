"""One node's regime and its shift test: the statistics behind `driftsched.core.drift`.

The formulas, the test and the merge rules are stated in that module's docstring; this module holds
their implementation for one node. A `Regime` is fed in timestamp order or late (an observation
from another replica), and keeps its window's and last-m sums up to date so that each observation
costs O(1) but for a re-basing, which scans the window once.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass
from typing import Any

Obs = tuple[float, float, float, float]  # (t, e, y, l)


def log_ratio(e: float, y: float) -> float:
    """l = ln(max(y, 1) / max(e, 1)), the shift test's variable (an empty answer counts as 1 token)."""
    return math.log(max(y, 1.0) / max(e, 1.0))


@dataclass(frozen=True, slots=True)
class ShiftRules:
    """The shift test's settings, shared by every regime of a tracker."""

    window: int
    tail: int  # m
    min_suffix: int  # ⌈m/2⌉
    ks: float  # ln2 / half-life
    ln_ratio: float
    z: float

    def score(self, n: float, lam: float, q: float, sn: float, sl: float, sq: float) -> float:
        """|Δ|/σ of suffix sums (sn, sl, sq) against the rest of regime (n, lam, q); 0 if no shift."""
        bn = n - sn
        if bn < self.tail or sn <= 0.0:
            return 0.0
        ms, mb = sl / sn, (lam - sl) / bn
        delta = abs(ms - mb)
        if delta <= self.ln_ratio:
            return 0.0
        vs, vb = max(sq / sn - ms * ms, 0.0), max((q - sq) / bn - mb * mb, 0.0)
        var = max(vs, vb) / sn + vb / bn
        z = delta / math.sqrt(var) if var > 0.0 else math.inf
        return z if z > self.z else 0.0


class Regime:
    """One node's regime: decayed sums at reference time `t` and its window (`driftsched.core.drift`).

    `start` is the regime's earliest timestamp (τ once `shifted`). `seen` counts the observations fed
    in, so `seen == len(window)` means the window holds all of them. `win` and `tail` are decayed
    (N, Λ, Q) of the window and of its last m observations, kept up to date on every change so that
    the per-observation shift test costs O(1); `_resum` recomputes them exactly.
    """

    __slots__ = ("e", "lam", "n", "q", "rules", "seen", "shifted", "start", "t", "tail", "win", "window", "y")

    def __init__(self, rules: ShiftRules, t: float, start: float | None = None, shifted: bool = False,
                 seen: int = 0, sums: tuple[float, ...] = (0.0,) * 5,
                 window: list[Obs] | None = None) -> None:  # fmt: skip
        self.rules, self.t, self.shifted, self.seen = rules, t, shifted, seen
        self.start = t if start is None else start
        self.n, self.e, self.y, self.lam, self.q = sums
        self.window: list[Obs] = window or []
        self._resum()

    def copy(self, rules: ShiftRules) -> Regime:
        return Regime(rules, self.t, self.start, self.shifted, self.seen, self.sums(), list(self.window))

    def sums(self) -> tuple[float, float, float, float, float]:
        return (self.n, self.e, self.y, self.lam, self.q)

    def _resum(self) -> None:
        ks = self.rules.ks
        self.win = list(_log_sums(self.window, self.t, ks))
        self.tail = list(_log_sums(self.window[-self.rules.tail :], self.t, ks))

    # -- feeding -----------------------------------------------------------------------------------

    def add(self, t: float, e: float, y: float) -> None:
        """Add one observation, then run the shift test."""
        self.seen += 1
        if t < self.start:
            if self.shifted:
                return  # predates the current regime
            self.start = t
        rules, lr = self.rules, log_ratio(e, y)
        win, tail = self.win, self.tail
        if t >= self.t:
            d, w = math.exp(-(t - self.t) * rules.ks), 1.0
            if d != 1.0:
                self.n, self.e, self.y, self.lam, self.q = (
                    self.n * d,
                    self.e * d,
                    self.y * d,
                    self.lam * d,
                    self.q * d,
                )
                win[:] = win[0] * d, win[1] * d, win[2] * d
                tail[:] = tail[0] * d, tail[1] * d, tail[2] * d
            self.t = t
        else:  # late observation from another replica: decay the observation, not the sums
            w = math.exp(-(self.t - t) * rules.ks)
        wl = w * lr
        self.n += w
        self.e += w * e
        self.y += w * y
        self.lam += wl
        self.q += wl * lr
        window, item = self.window, (t, e, y, lr)
        at = len(window) if not window or item >= window[-1] else bisect.bisect_right(window, item)
        window.insert(at, item)
        win[:] = win[0] + w, win[1] + wl, win[2] + wl * lr
        size, m = len(window), rules.tail
        if at >= size - m:  # it joins the last m, and pushes one out of them
            tail[:] = tail[0] + w, tail[1] + wl, tail[2] + wl * lr
            if size > m:
                _take(tail, window[size - m - 1], self.t, rules.ks)
        if size > rules.window:  # never one of the last m, as m <= K
            _take(win, window.pop(0), self.t, rules.ks)
        self._test()

    def _test(self) -> None:
        rules = self.rules
        if len(self.window) < rules.tail:
            return
        regime = (self.n, self.lam, self.q)
        if rules.score(*regime, *self.tail) or rules.score(*regime, *self.win):
            self._rebase()

    def _rebase(self) -> None:
        """Restart the regime at the window's most significant change point."""
        rules, window = self.rules, self.window
        best, cut = 0.0, -1
        sn = sl = sq = 0.0
        for j in range(len(window) - 1, -1, -1):
            t, _, _, lr = window[j]
            w = math.exp(-(self.t - t) * rules.ks)
            sn, sl, sq = sn + w, sl + w * lr, sq + w * lr * lr
            if len(window) - j >= rules.min_suffix:
                z = rules.score(self.n, self.lam, self.q, sn, sl, sq)
                if z > best:
                    best, cut = z, j
        if cut < 0:
            return
        self.window = window[cut:]
        self.start, self.shifted = self.window[0][0], True
        self.n, self.e, self.y, self.lam, self.q = _decayed(self.window, self.t, rules.ks)
        self._resum()

    # -- merging -----------------------------------------------------------------------------------

    def replayable(self) -> bool:
        """True when the window holds every observation this node was fed."""
        return self.seen == len(self.window)

    def merge(self, other: Regime) -> None:
        """Align both regimes on the later shift, add, keep the K latest, test once (see drift)."""
        cuts = [x.start for x in (self, other) if x.shifted]
        tau = max(cuts) if cuts else None
        parts = [_restricted(x, tau) for x in (self, other)]
        t = max(self.t, other.t)
        sums = [0.0] * 5
        for ref, part_sums, _ in parts:
            d = math.exp(-(t - ref) * self.rules.ks)
            sums = [a + d * b for a, b in zip(sums, part_sums, strict=True)]
        merged = list(heapq.merge(parts[0][2], parts[1][2]))
        self.t, self.seen = t, self.seen + other.seen
        self.start = tau if tau is not None else min(self.start, other.start)
        self.shifted = tau is not None
        self.n, self.e, self.y, self.lam, self.q = sums
        self.window = merged[-self.rules.window :]
        self._resum()
        self._test()

    def state(self) -> list[Any]:
        return [self.t, self.start, self.shifted, self.seen, *self.sums(), [list(o[:3]) for o in self.window]]


def _take(sums: list[float], item: Obs, t: float, ks: float) -> None:
    """Remove a window item from decayed (N, Λ, Q) held at reference time t."""
    w = math.exp(-(t - item[0]) * ks)
    wl = w * item[3]
    sums[:] = sums[0] - w, sums[1] - wl, sums[2] - wl * item[3]


def _decayed(items: list[Obs], t: float, ks: float) -> tuple[float, float, float, float, float]:
    """Decayed (N, E, Y, Λ, Q) of window items, at reference time t."""
    n = e = y = lam = q = 0.0
    for ti, ei, yi, li in items:
        w = math.exp(-(t - ti) * ks)
        n, e, y, lam, q = n + w, e + w * ei, y + w * yi, lam + w * li, q + w * li * li
    return (n, e, y, lam, q)


def _log_sums(items: list[Obs], t: float, ks: float) -> tuple[float, float, float]:
    """Decayed (N, Λ, Q) of window items, at reference time t: all the shift test needs."""
    n = lam = q = 0.0
    for ti, _, _, li in items:
        w = math.exp(-(t - ti) * ks)
        n, lam, q = n + w, lam + w * li, q + w * li * li
    return (n, lam, q)


def _restricted(node: Regime, tau: float | None) -> tuple[float, tuple[float, ...], list[Obs]]:
    """(reference time, sums, window) of a node's observations from τ on."""
    if tau is None or node.start >= tau:
        return node.t, node.sums(), node.window
    kept = [o for o in node.window if o[0] >= tau]
    return node.t, _decayed(kept, node.t, node.rules.ks), kept
