r"""Drift statistics and the adaptive bias correction of output-token estimates.

Every finished request yields one observation: its raw estimate e, corrected estimate c and observed
output tokens y, at time t. Observations feed a hierarchy of nodes, coarse to fine::

    ()  →  (category,)  →  (tenant, category)  →  (tenant, category, 2, b // 2)  →  (tenant, category, 4, b)

where b is the quarter-octave prompt bucket (`driftsched.core.estimator.prompt_bucket`): the last two
levels split by half- and quarter-octaves of prompt length (`prompt_buckets`; shrinkage lets the data
decide how fine a split it supports). Each node describes its current *regime* (`driftsched.core.regime`):
every observation it has seen, or those since the last shift it declared (at time τ). Over the regime
it keeps sums decayed exponentially with half-life h (`half_life_s`)::

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
  stands in for the effective sample size (no larger, as w_i ≤ 1, so the test errs toward no shift).
* **Re-basing.** The change point is the split of the window, leaving at least ⌈m/2⌉ observations
  after it, whose suffix has the largest |Δ|/σ among those past both thresholds. The regime restarts
  there: τ is the suffix's first timestamp, the sums become the suffix's, older observations are
  dropped. The statistics then describe the new level at once, and nothing pulls the factor back to
  a mixture of the old and new levels. Observations older than τ that arrive later are ignored.
  Assumed: levels are piecewise constant, with shifts at least 2m observations apart (B needs them).
* **Correction.** corrected = clip(e · f_leaf, 1, max_tokens), with f clamped to
  [`min_factor`, `max_factor`]. The factor is learned against the *raw* estimate, never against the
  corrected one, so the correction does not feed back into itself.

Merging (the scheduler's batches → shared store) works node by node. A node this tracker lacks is
copied. A node the other tracker holds in full — every observation it was fed still in its window, so
at most K, and no shift declared — is replayed: the result is exactly that of feeding this tracker those
observations after its own, in timestamp order (the usual case: the scheduler's batch of about a second).
Otherwise the regimes are aligned on the later τ (a side whose regime began before it keeps only its
window's observations from τ on), the sums are added at the later reference time, the windows merged
as "the K latest", and the shift test is run once on the result. This path is symmetric, and when no
shift is declared (on either side or on the result) it equals feeding every observation in any
order, as plain decayed sums do: the order in which observations and batches arrive matters only
through when, and so where, a shift is declared. A snapshot is the sums and windows
(JSON-serialisable). Accuracy statistics per (tenant, category) — count, mean signed drift y − e,
MAE and RMSE of raw and corrected estimates, and the recent MAE (decayed with `recent_half_life_s`,
kept in `driftsched.core.accuracy`) — are plain or decayed sums, and merge exactly in any order.
"""

from __future__ import annotations

import math
from typing import Any

from driftsched.core.accuracy import ERROR_FIELDS, DriftStat, ErrorSums, summarize
from driftsched.core.config import DriftConfig
from driftsched.core.regime import Regime, ShiftRules, log_ratio

_LN2 = math.log(2.0)
SNAPSHOT_VERSION = 5
NodeKey = tuple[str | int, ...]


class DriftTracker:
    """Per-(tenant, category) drift statistics and the bias-correction factors (see module doc)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = cfg = config or DriftConfig()
        self._rules = ShiftRules(
            window=cfg.shift_window,
            tail=cfg.shift_min_samples,
            min_suffix=(cfg.shift_min_samples + 1) // 2,
            ks=_LN2 / cfg.half_life_s,
            ln_ratio=math.log(cfg.shift_ratio),
            z=cfg.shift_z,
        )
        self._kf = _LN2 / cfg.recent_half_life_s
        self._nodes: dict[NodeKey, Regime] = {}
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
                node = self._nodes[key] = Regime(self._rules, now)
            node.add(now, float(raw), float(observed))
        errors = self._errors.get((tenant, category))
        if errors is None:
            errors = self._errors[(tenant, category)] = ErrorSums((now,) + (0.0,) * (len(ERROR_FIELDS) - 1))
        errors.add(now, raw, corrected, observed, self._kf)

    def merge(self, other: DriftTracker) -> None:
        """Fold another tracker's statistics into this one (batches → shared store; module doc)."""
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
            items = [(float(a), float(b), float(c), log_ratio(float(b), float(c))) for a, b, c in window]
            tracker._nodes[tuple(key)] = Regime(
                tracker._rules, float(t), float(start), bool(shifted), int(seen),
                (float(n), float(e), float(y), float(lam), float(q)), items,
            )  # fmt: skip
        for tenant, category, *values in data["errors"]:
            tracker._errors[(str(tenant), str(category))] = ErrorSums(tuple(float(v) for v in values))
        return tracker
