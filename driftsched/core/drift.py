r"""Drift statistics and the adaptive bias correction of output-token estimates.

Every finished request yields one observation: its raw estimate e, corrected estimate c and observed
output tokens y, at time t. Observations feed a hierarchy of nodes, coarse to fine::

    ()  →  (category,)  →  (tenant, category)  →  (tenant, category, prompt_bucket)

Each node keeps exponentially time-decayed sums on two time scales s ∈ {slow, fast} with half-life h_s:

    N_s = Σ w_i,   E_s = Σ w_i·e_i,   Y_s = Σ w_i·y_i,   w_i = 2^(−(t_now − t_i) / h_s)

and the node's observed bias is the ratio of means r_s = Y_s / E_s (multiplicative: output lengths are
skewed and errors scale with the length, so a factor transfers across max_tokens and prompt sizes).

* **Abrupt shifts.** If N_fast ≥ m (`shift_min_samples`) and |ln(r_fast / r_slow)| > ln ρ
  (`shift_ratio`), the fast scale is used, (r, N) = (r_fast, N_fast); otherwise (r_slow, N_slow).
  The slow scale gives a low-variance factor in steady state; the fast one follows a shift within
  about m observations instead of a slow half-life.
* **Few samples.** A node's factor shrinks toward its parent's with n0 (`prior_strength`)
  pseudo-observations: f = (N·r + n0·f_parent) / (N + n0), and f_parent = 1 above the root.
  A new (tenant, category) thus starts from what the category taught on other tenants, and N decays
  with time, so stale evidence also falls back to the parent.
* **Correction.** corrected = clip(e · f_leaf, 1, max_tokens), with f clamped to
  [`min_factor`, `max_factor`]. The factor is learned against the *raw* estimate, never against the
  corrected one, so the correction does not feed back into itself.

Decayed sums merge exactly: bring both to the later reference time and add. Merging the trackers of
several replicas therefore equals feeding one tracker every observation, in any order, and a snapshot
is just the sums (JSON-serialisable). Accuracy statistics per (tenant, category) — count, mean signed
drift y − e, MAE and RMSE of raw and corrected estimates, and fast-decayed ("recent") MAE — are plain
or decayed sums too, and merge the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from driftsched.core.config import DriftConfig

_LN2 = math.log(2.0)
NodeKey = tuple[str | int, ...]


class _Node:
    """Decayed sums of one node: slow (n, e, y) and fast (n, e, y) at reference time `t`."""

    __slots__ = ("ef", "es", "nf", "ns", "t", "yf", "ys")

    def __init__(self, t: float = 0.0, sums: tuple[float, ...] = (0.0,) * 6) -> None:
        self.t = t
        self.ns, self.es, self.ys, self.nf, self.ef, self.yf = sums

    def add(self, t: float, e: float, y: float, ks: float, kf: float) -> None:
        """Add one observation; `ks`/`kf` are ln2/half-life of each scale."""
        if t >= self.t:
            ds, df = math.exp(-(t - self.t) * ks), math.exp(-(t - self.t) * kf)
            self.ns, self.es, self.ys = self.ns * ds + 1.0, self.es * ds + e, self.ys * ds + y
            self.nf, self.ef, self.yf = self.nf * df + 1.0, self.ef * df + e, self.yf * df + y
            self.t = t
        else:  # late observation from another replica: decay the observation, not the sums
            ws, wf = math.exp(-(self.t - t) * ks), math.exp(-(self.t - t) * kf)
            self.ns += ws
            self.es += ws * e
            self.ys += ws * y
            self.nf += wf
            self.ef += wf * e
            self.yf += wf * y

    def merge(self, other: _Node, ks: float, kf: float) -> None:
        t = max(self.t, other.t)
        a_s, a_f = math.exp(-(t - self.t) * ks), math.exp(-(t - self.t) * kf)
        b_s, b_f = math.exp(-(t - other.t) * ks), math.exp(-(t - other.t) * kf)
        self.ns = self.ns * a_s + other.ns * b_s
        self.es = self.es * a_s + other.es * b_s
        self.ys = self.ys * a_s + other.ys * b_s
        self.nf = self.nf * a_f + other.nf * b_f
        self.ef = self.ef * a_f + other.ef * b_f
        self.yf = self.yf * a_f + other.yf * b_f
        self.t = t

    def sums(self) -> tuple[float, ...]:
        return (self.ns, self.es, self.ys, self.nf, self.ef, self.yf)


class _Errors:
    """Accuracy sums of one (tenant, category): plain for all-time, decayed for recent."""

    __slots__ = (
        "abs_corr",
        "abs_raw",
        "n",
        "rec_corr",
        "rec_n",
        "rec_raw",
        "sq_corr",
        "sq_raw",
        "sum_corr",
        "sum_raw",
        "t",
    )

    def __init__(self, values: tuple[float, ...] = (0.0,) * 12) -> None:
        (self.t, self.n, self.sum_raw, self.abs_raw, self.sq_raw, self.sum_corr, self.abs_corr,
         self.sq_corr, self.rec_n, self.rec_raw, self.rec_corr, _) = values

    def add(self, t: float, e: float, c: float, y: float, kf: float) -> None:
        dr, dc = y - e, y - c
        self.n += 1
        self.sum_raw += dr
        self.abs_raw += abs(dr)
        self.sq_raw += dr * dr
        self.sum_corr += dc
        self.abs_corr += abs(dc)
        self.sq_corr += dc * dc
        if t >= self.t:
            d, w = math.exp(-(t - self.t) * kf), 1.0
            self.t = t
        else:
            d, w = 1.0, math.exp(-(self.t - t) * kf)
        self.rec_n = self.rec_n * d + w
        self.rec_raw = self.rec_raw * d + w * abs(dr)
        self.rec_corr = self.rec_corr * d + w * abs(dc)

    def merge(self, other: _Errors, kf: float) -> None:
        t = max(self.t, other.t)
        a, b = math.exp(-(t - self.t) * kf), math.exp(-(t - other.t) * kf)
        self.n += other.n
        self.sum_raw += other.sum_raw
        self.abs_raw += other.abs_raw
        self.sq_raw += other.sq_raw
        self.sum_corr += other.sum_corr
        self.abs_corr += other.abs_corr
        self.sq_corr += other.sq_corr
        self.rec_n = self.rec_n * a + other.rec_n * b
        self.rec_raw = self.rec_raw * a + other.rec_raw * b
        self.rec_corr = self.rec_corr * a + other.rec_corr * b
        self.t = t

    def values(self) -> tuple[float, ...]:
        return (self.t, self.n, self.sum_raw, self.abs_raw, self.sq_raw, self.sum_corr,
                self.abs_corr, self.sq_corr, self.rec_n, self.rec_raw, self.rec_corr, 0.0)


@dataclass(slots=True, frozen=True)
class DriftStat:
    """Estimation accuracy and current correction of one (tenant, category); tenant "*" = all."""

    tenant: str
    category: str
    count: int
    mean_drift_raw: float
    mean_drift_corrected: float
    mae_raw: float
    mae_corrected: float
    rmse_raw: float
    rmse_corrected: float
    recent_mae_raw: float
    recent_mae_corrected: float
    factor: float


class DriftTracker:
    """Per-(tenant, category) drift statistics and the bias-correction factors (see module doc)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._ks = _LN2 / self.config.half_life_s
        self._kf = _LN2 / self.config.fast_half_life_s
        self._ln_shift = math.log(self.config.shift_ratio)
        self._nodes: dict[NodeKey, _Node] = {}
        self._errors: dict[tuple[str, str], _Errors] = {}

    # -- feeding ---------------------------------------------------------------------------------

    def _path(self, tenant: str, category: str, bucket: int) -> tuple[NodeKey, ...]:
        if self.config.prompt_buckets:
            return ((), (category,), (tenant, category), (tenant, category, bucket))
        return ((), (category,), (tenant, category))

    def observe(
        self, tenant: str, category: str, bucket: int, raw: float, corrected: float,
        observed: float, now: float,
    ) -> None:
        """Record one finished request."""
        ks, kf = self._ks, self._kf
        for key in self._path(tenant, category, bucket):
            node = self._nodes.get(key)
            if node is None:
                node = self._nodes[key] = _Node(now)
            node.add(now, raw, observed, ks, kf)
        errors = self._errors.get((tenant, category))
        if errors is None:
            errors = self._errors[(tenant, category)] = _Errors((now,) + (0.0,) * 11)
        errors.add(now, raw, corrected, observed, kf)

    def merge(self, other: DriftTracker) -> None:
        """Fold another tracker's statistics into this one (replicas → shared store)."""
        ks, kf = self._ks, self._kf
        for key, node in other._nodes.items():
            mine = self._nodes.get(key)
            if mine is None:
                self._nodes[key] = _Node(node.t, node.sums())
            else:
                mine.merge(node, ks, kf)
        for ekey, err in other._errors.items():
            have = self._errors.get(ekey)
            if have is None:
                self._errors[ekey] = _Errors(err.values())
            else:
                have.merge(err, kf)

    # -- correction ------------------------------------------------------------------------------

    def factor(self, tenant: str, category: str, bucket: int = 0, now: float | None = None) -> float:
        """Correction factor for a new request; `now` decays stale evidence toward the parent."""
        return self._factor_along(self._path(tenant, category, bucket), now)

    def _factor_along(self, path: tuple[NodeKey, ...], now: float | None) -> float:
        if not self.config.enabled:
            return 1.0
        cfg = self.config
        n0 = cfg.prior_strength
        f = 1.0
        for key in path:
            node = self._nodes.get(key)
            if node is None:
                break  # a missing node has no children either: the parent's factor stands
            ns, nf = node.ns, node.nf
            if now is not None and now > node.t:
                ns *= math.exp(-(now - node.t) * self._ks)
                nf *= math.exp(-(now - node.t) * self._kf)
            r_slow = node.ys / node.es if node.es > 0 else f
            r, n = r_slow, ns
            if nf >= cfg.shift_min_samples and node.ef > 0 and r_slow > 0:
                r_fast = node.yf / node.ef
                if r_fast > 0 and abs(math.log(r_fast / r_slow)) > self._ln_shift:
                    r, n = r_fast, nf
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

    def _stat(self, tenant: str, category: str, group: list[_Errors], now: float | None) -> DriftStat:
        n = sum(e.n for e in group)
        rec_n = sum(e.rec_n for e in group) or 1.0
        d = n or 1.0
        if tenant == "*" and category == "*":
            factor = 1.0
        elif tenant == "*":
            node = self._nodes.get((category,))
            factor = node.ys / node.es if node is not None and node.es > 0 else 1.0
        else:
            factor = self._factor_along(((), (category,), (tenant, category)), now)
        return DriftStat(
            tenant=tenant,
            category=category,
            count=int(n),
            mean_drift_raw=sum(e.sum_raw for e in group) / d,
            mean_drift_corrected=sum(e.sum_corr for e in group) / d,
            mae_raw=sum(e.abs_raw for e in group) / d,
            mae_corrected=sum(e.abs_corr for e in group) / d,
            rmse_raw=math.sqrt(sum(e.sq_raw for e in group) / d),
            rmse_corrected=math.sqrt(sum(e.sq_corr for e in group) / d),
            recent_mae_raw=sum(e.rec_raw for e in group) / rec_n,
            recent_mae_corrected=sum(e.rec_corr for e in group) / rec_n,
            factor=factor,
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state; `restore` rebuilds an equal tracker."""
        return {
            "version": 1,
            "nodes": [[list(k), n.t, *n.sums()] for k, n in self._nodes.items()],
            "errors": [[t, c, *e.values()] for (t, c), e in self._errors.items()],
        }

    @classmethod
    def restore(cls, data: dict[str, Any], config: DriftConfig | None = None) -> DriftTracker:
        """Rebuild a tracker from `snapshot()` output."""
        if data.get("version") != 1:
            raise ValueError(f"unsupported drift snapshot version {data.get('version')!r}")
        tracker = cls(config)
        for key, t, *sums in data["nodes"]:
            tracker._nodes[tuple(key)] = _Node(float(t), tuple(float(s) for s in sums))
        for tenant, category, *values in data["errors"]:
            tracker._errors[(str(tenant), str(category))] = _Errors(tuple(float(v) for v in values))
        return tracker
