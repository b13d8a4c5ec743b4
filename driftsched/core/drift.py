r"""Drift statistics and the adaptive bias correction of output-token estimates.

Every finished request yields one observation: its raw estimate e, corrected estimate c and observed
output tokens y, at time t. Observations feed a hierarchy of nodes, coarse to fine::

    ()  →  (category,)  →  (tenant, category)  →  (tenant, category, 2, b // 2)  →  (tenant, category, 4, b)

where b is the quarter-octave prompt bucket (`driftsched.core.estimator.prompt_bucket`): the last two
levels split by half- and quarter-octaves of prompt length (`prompt_buckets`; shrinkage lets the data
decide how fine a split it supports). Each node describes its current *regime*: every observation it
has seen, or those since the last shift it declared (at time τ). Over the regime it keeps sums decayed
exponentially with half-life h (`half_life_s`)::

    N = Σ w_i,  E = Σ w_i·e_i,  Y = Σ w_i·y_i,  Λ = Σ w_i·l_i,  Q = Σ w_i·l_i²,
    w_i = 2^(−(t_now − t_i) / h),  l_i = ln(max(y_i, 1) / max(e_i, 1))

and the regime's K most recent observations by timestamp (K = `shift_window`).

* **Factor.** The observed bias is a ratio of means, r = Y / E (multiplicative: output lengths are
  skewed and errors scale with length, so a factor transfers across max_tokens and prompt sizes). It
  shrinks toward the parent's factor with n0 (`prior_strength`) pseudo-observations:
  f = (N·r + n0·f_parent) / (N + n0), f_parent = 1 above the root, with N decayed to the time of the
  request. A new (tenant, category) starts from what the category taught on other tenants, and stale
  evidence — a regime begun by a shift included — falls back to the parent as N decays.
* **Shift test.** After every observation the node compares a recent suffix S of its regime, the
  last m observations (`shift_min_samples`) and the whole window, with the rest B of the regime, on
  the decayed mean of l (a log-scale test: one outlier moves it little). With Δ = Λ_S/N_S − Λ_B/N_B
  and s² the decayed variance of l within a part, S marks a shift when N_B ≥ m, |Δ| > ln ρ
  (`shift_ratio`) and |Δ| > z·σ (`shift_z`), σ² = max(s_S², s_B²)/N_S + s_B²/N_B. The larger
  variance keeps a suffix that is calm by chance, or wild because of one outlier, from passing; N
  stands in for the effective sample size (it underestimates it, so the test errs toward no shift).
* **Re-basing.** The change point is the split of the window, leaving at least ⌈m/2⌉ observations
  after it, whose suffix has the largest |Δ|/σ among those past both thresholds. The regime restarts
  there: τ is the suffix's first timestamp, the sums become the suffix's, older observations are
  dropped. The statistics then describe the new level at once, and nothing pulls the factor back to
  a mixture of the old and new levels. Observations older than τ that arrive later are ignored.
  Assumed: levels are piecewise constant, with shifts at least 2m observations apart (B needs them).
* **Correction.** corrected = clip(e · f_leaf, 1, max_tokens), with f clamped to
  [`min_factor`, `max_factor`]. The factor is learned against the *raw* estimate, never against the
  corrected one, so the correction does not feed back into itself.

Merging (replicas → shared store) works node by node. A node the other tracker holds in full — every
observation it was fed still in its window, so at most K and no shift declared — is replayed: the
result is exactly that of feeding this tracker those observations after its own, in timestamp order
(the usual case for the replicas' small batches). Otherwise the regimes are aligned on the later τ
(the side that has not seen that shift keeps only its window's observations from τ on), the sums
added at the later reference time, the windows merged as "the K latest", and the shift test run once
on the result; this path is symmetric, and without declared shifts it equals feeding every
observation in any order, as plain decayed sums do. A snapshot is the sums and windows
(JSON-serialisable). Accuracy statistics per (tenant, category) — count, mean signed drift y − e, MAE
and RMSE of raw and corrected estimates, and the recent MAE (decayed with `recent_half_life_s`, kept
in `driftsched.core.accuracy`) — are plain or decayed sums, and merge exactly in any order.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass
from typing import Any

from driftsched.core.accuracy import ERROR_FIELDS, DriftStat, ErrorSums, summarize
from driftsched.core.config import DriftConfig

_LN2 = math.log(2.0)
SNAPSHOT_VERSION = 5
NodeKey = tuple[str | int, ...]
Obs = tuple[float, float, float, float]  # (t, e, y, l)


def _log_ratio(e: float, y: float) -> float:
    return math.log(max(y, 1.0) / max(e, 1.0))


@dataclass(frozen=True, slots=True)
class _Rules:
    """The shift test's settings, shared by every node of a tracker."""

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


class _Node:
    """One node's regime: decayed sums at reference time `t` and its window (see module doc).

    `start` is the regime's earliest timestamp (τ once `shifted`). `seen` counts the observations fed
    in, so `seen == len(window)` means the window holds all of them. `win` and `tail` are decayed
    (N, Λ, Q) of the window and of its last m observations, kept up to date on every change so that
    the per-observation shift test costs O(1); `_resum` recomputes them exactly.
    """

    __slots__ = ("e", "lam", "n", "q", "rules", "seen", "shifted", "start", "t", "tail", "win", "window", "y")

    def __init__(self, rules: _Rules, t: float, start: float | None = None, shifted: bool = False,
                 seen: int = 0, sums: tuple[float, ...] = (0.0,) * 5,
                 window: list[Obs] | None = None) -> None:  # fmt: skip
        self.rules, self.t, self.shifted, self.seen = rules, t, shifted, seen
        self.start = t if start is None else start
        self.n, self.e, self.y, self.lam, self.q = sums
        self.window: list[Obs] = window or []
        self._resum()

    def copy(self, rules: _Rules) -> _Node:
        return _Node(rules, self.t, self.start, self.shifted, self.seen, self.sums(), list(self.window))

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
        rules, lr = self.rules, _log_ratio(e, y)
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

    def merge(self, other: _Node) -> None:
        """Align both regimes on the later shift, add, keep the K latest, test once (module doc)."""
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


def _restricted(node: _Node, tau: float | None) -> tuple[float, tuple[float, ...], list[Obs]]:
    """(reference time, sums, window) of a node's observations from τ on."""
    if tau is None or node.start >= tau:
        return node.t, node.sums(), node.window
    kept = [o for o in node.window if o[0] >= tau]
    return node.t, _decayed(kept, node.t, node.rules.ks), kept


class DriftTracker:
    """Per-(tenant, category) drift statistics and the bias-correction factors (see module doc)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = cfg = config or DriftConfig()
        self._rules = _Rules(
            window=cfg.shift_window,
            tail=cfg.shift_min_samples,
            min_suffix=(cfg.shift_min_samples + 1) // 2,
            ks=_LN2 / cfg.half_life_s,
            ln_ratio=math.log(cfg.shift_ratio),
            z=cfg.shift_z,
        )
        self._kf = _LN2 / cfg.recent_half_life_s
        self._nodes: dict[NodeKey, _Node] = {}
        self._errors: dict[tuple[str, str], ErrorSums] = {}

    # -- feeding ---------------------------------------------------------------------------------

    def _path(self, tenant: str, category: str, bucket: int) -> tuple[NodeKey, ...]:
        if self.config.prompt_buckets:
            return ((), (category,), (tenant, category), (tenant, category, 2, bucket // 2),
                    (tenant, category, 4, bucket))  # fmt: skip
        return ((), (category,), (tenant, category))

    def observe(
        self,
        tenant: str,
        category: str,
        bucket: int,
        raw: float,
        corrected: float,
        observed: float,
        now: float,
    ) -> None:
        """Record one finished request (`bucket`: its quarter-octave prompt bucket)."""
        for key in self._path(tenant, category, bucket):
            node = self._nodes.get(key)
            if node is None:
                node = self._nodes[key] = _Node(self._rules, now)
            node.add(now, float(raw), float(observed))
        errors = self._errors.get((tenant, category))
        if errors is None:
            errors = self._errors[(tenant, category)] = ErrorSums((now,) + (0.0,) * (len(ERROR_FIELDS) - 1))
        errors.add(now, raw, corrected, observed, self._kf)

    def merge(self, other: DriftTracker) -> None:
        """Fold another tracker's statistics into this one (replicas → shared store; module doc)."""
        for key, node in other._nodes.items():
            mine = self._nodes.get(key)
            if mine is None:
                self._nodes[key] = node.copy(self._rules)
            elif node.replayable():
                for t, e, y, _ in node.window:
                    mine.add(t, e, y)
            else:
                mine.merge(node)
        for ekey, err in other._errors.items():
            have = self._errors.get(ekey)
            if have is None:
                self._errors[ekey] = ErrorSums(err.values())
            else:
                have.merge(err, self._kf)

    # -- correction ------------------------------------------------------------------------------

    def factor(self, tenant: str, category: str, bucket: int = 0, now: float | None = None) -> float:
        """Correction factor for a new request; `now` decays stale evidence toward the parent."""
        return self._factor_along(self._path(tenant, category, bucket), now)

    def _factor_along(self, path: tuple[NodeKey, ...], now: float | None) -> float:
        if not self.config.enabled:
            return 1.0
        cfg, ks = self.config, self._rules.ks
        n0 = cfg.prior_strength
        f = 1.0
        for key in path:
            node = self._nodes.get(key)
            if node is None:
                break  # a missing node has no children either: the parent's factor stands
            n = node.n
            if now is not None and now > node.t:
                n *= math.exp(-(now - node.t) * ks)
            r = node.y / node.e if node.e > 0 else f
            f = (n * r + n0 * f) / (n + n0) if n + n0 > 0 else f
        return min(cfg.max_factor, max(cfg.min_factor, f))

    # -- reporting and persistence ---------------------------------------------------------------

    def stats(self, now: float | None = None) -> list[DriftStat]:
        """Accuracy per (tenant, category), sorted, plus a final all-tenant row per category."""
        rows = [self._stat(t, c, [e], now) for (t, c), e in sorted(self._errors.items())]
        for category in sorted({c for _, c in self._errors}):
            group = [e for (_, c), e in self._errors.items() if c == category]
            rows.append(self._stat("*", category, group, now))
        return rows

    def totals(self) -> DriftStat:
        """Accuracy over every observation."""
        return self._stat("*", "*", list(self._errors.values()), None)

    def _stat(self, tenant: str, category: str, group: list[ErrorSums], now: float | None) -> DriftStat:
        if tenant == "*" and category == "*":
            factor = 1.0
        elif tenant == "*":
            node = self._nodes.get((category,))
            factor = node.y / node.e if node is not None and node.e > 0 else 1.0
        else:
            factor = self._factor_along(((), (category,), (tenant, category)), now)
        return summarize(tenant, category, group, factor)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state; `restore` rebuilds an equal tracker."""
        return {
            "version": SNAPSHOT_VERSION,
            "nodes": [[list(k), *n.state()] for k, n in self._nodes.items()],
            "errors": [[t, c, *e.values()] for (t, c), e in self._errors.items()],
        }

    @classmethod
    def restore(cls, data: dict[str, Any], config: DriftConfig | None = None) -> DriftTracker:
        """Rebuild a tracker from `snapshot()` output of this version (others raise ValueError)."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"unsupported drift snapshot version {data.get('version')!r}; "
                f"this build reads version {SNAPSHOT_VERSION} only"
            )
        tracker = cls(config)
        for key, t, start, shifted, seen, n, e, y, lam, q, window in data["nodes"]:
            items = [(float(a), float(b), float(c), _log_ratio(float(b), float(c))) for a, b, c in window]
            tracker._nodes[tuple(key)] = _Node(
                tracker._rules, float(t), float(start), bool(shifted), int(seen),
                (float(n), float(e), float(y), float(lam), float(q)), items,
            )  # fmt: skip
        for tenant, category, *values in data["errors"]:
            tracker._errors[(str(tenant), str(category))] = ErrorSums(tuple(float(v) for v in values))
        return tracker
