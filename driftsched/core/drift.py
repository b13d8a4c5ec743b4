r"""Drift statistics and the adaptive bias correction of output-token estimates.

Every finished request yields one observation: its raw estimate e, corrected estimate c and observed
output tokens y, at time t. Observations feed a hierarchy of nodes, coarse to fine::

    ()  →  (category,)  →  (tenant, category)  →  (tenant, category, prompt_bucket)

Each node keeps exponentially time-decayed sums with half-life h (`half_life_s`)::

    N = Σ w_i,   E = Σ w_i·e_i,   Y = Σ w_i·y_i,   w_i = 2^(−(t_now − t_i) / h)

and its K most recent observations by timestamp (K = `shift_window`), with window sums E_K and Y_K.
The node's observed bias is a ratio of means, r = Y / E (multiplicative: output lengths are skewed
and errors scale with length, so a factor transfers across max_tokens and prompt sizes).

* **Abrupt shifts.** If the window holds at least m observations (`shift_min_samples`) and
  |ln(r_K / r)| > ln ρ (`shift_ratio`), the window takes over: (r, N) = (Y_K / E_K, |window|).
  The decayed sums give a low-variance factor in steady state; the window follows a shift within
  about K observations whatever the request rate, instead of waiting out a half-life.
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
drift y − e, MAE and RMSE of raw and corrected estimates, and the recent MAE (decayed with
`recent_half_life_s`, kept in `driftsched.core.accuracy`) — are plain or decayed sums too, and merge
the same way. The window merges as "the K latest of both", which is also order-independent.
"""

from __future__ import annotations

import bisect
import heapq
import math
from typing import Any

from driftsched.core.accuracy import ERROR_FIELDS, DriftStat, ErrorSums, summarize
from driftsched.core.config import DriftConfig

_LN2 = math.log(2.0)
NodeKey = tuple[str | int, ...]


class _Node:
    """One node: slow decayed sums (n, e, y) at reference time `t`, and the recent window.

    The window holds the `size` most recent observations as sorted (t, e, y) triples; keeping the
    latest by timestamp (not by arrival at this tracker) makes it independent of feeding order.
    """

    __slots__ = ("es", "ns", "size", "t", "we", "window", "wy", "ys")

    def __init__(
        self,
        size: int,
        t: float = 0.0,
        sums: tuple[float, float, float] = (0.0, 0.0, 0.0),
        window: list[tuple[float, float, float]] | None = None,
    ) -> None:
        self.size = size
        self.t = t
        self.ns, self.es, self.ys = sums
        self.window: list[tuple[float, float, float]] = window or []
        self._resum()

    def _resum(self) -> None:
        self.we = sum(e for _, e, _ in self.window)
        self.wy = sum(y for _, _, y in self.window)

    def add(self, t: float, e: float, y: float, ks: float) -> None:
        """Add one observation; `ks` is ln2 / slow half-life."""
        if t >= self.t:
            d = math.exp(-(t - self.t) * ks)
            self.ns, self.es, self.ys = self.ns * d + 1.0, self.es * d + e, self.ys * d + y
            self.t = t
        else:  # late observation from another replica: decay the observation, not the sums
            w = math.exp(-(self.t - t) * ks)
            self.ns += w
            self.es += w * e
            self.ys += w * y
        window, item = self.window, (t, e, y)
        if window and item < window[-1]:
            bisect.insort(window, item)
        else:
            window.append(item)
        self.we += e
        self.wy += y
        if len(window) > self.size:
            _, old_e, old_y = window.pop(0)
            self.we -= old_e
            self.wy -= old_y

    def merge(self, other: _Node, ks: float) -> None:
        t = max(self.t, other.t)
        a, b = math.exp(-(t - self.t) * ks), math.exp(-(t - other.t) * ks)
        self.ns = self.ns * a + other.ns * b
        self.es = self.es * a + other.es * b
        self.ys = self.ys * a + other.ys * b
        self.t = t
        self.window = list(heapq.merge(self.window, other.window))[-self.size :]
        self._resum()

    def state(self) -> list[Any]:
        return [self.t, self.ns, self.es, self.ys, [list(o) for o in self.window]]


class DriftTracker:
    """Per-(tenant, category) drift statistics and the bias-correction factors (see module doc)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._ks = _LN2 / self.config.half_life_s
        self._kf = _LN2 / self.config.recent_half_life_s
        self._window = self.config.shift_window
        self._ln_shift = math.log(self.config.shift_ratio)
        self._nodes: dict[NodeKey, _Node] = {}
        self._errors: dict[tuple[str, str], ErrorSums] = {}

    # -- feeding ---------------------------------------------------------------------------------

    def _path(self, tenant: str, category: str, bucket: int) -> tuple[NodeKey, ...]:
        if self.config.prompt_buckets:
            return ((), (category,), (tenant, category), (tenant, category, bucket))
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
        """Record one finished request."""
        ks, kf = self._ks, self._kf
        for key in self._path(tenant, category, bucket):
            node = self._nodes.get(key)
            if node is None:
                node = self._nodes[key] = _Node(self._window, now)
            node.add(now, float(raw), float(observed), ks)
        errors = self._errors.get((tenant, category))
        if errors is None:
            errors = self._errors[(tenant, category)] = ErrorSums((now,) + (0.0,) * (len(ERROR_FIELDS) - 1))
        errors.add(now, raw, corrected, observed, kf)

    def merge(self, other: DriftTracker) -> None:
        """Fold another tracker's statistics into this one (replicas → shared store)."""
        ks, kf = self._ks, self._kf
        for key, node in other._nodes.items():
            mine = self._nodes.get(key)
            if mine is None:
                self._nodes[key] = _Node(self._window, node.t, (node.ns, node.es, node.ys), list(node.window))
            else:
                mine.merge(node, ks)
        for ekey, err in other._errors.items():
            have = self._errors.get(ekey)
            if have is None:
                self._errors[ekey] = ErrorSums(err.values())
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
            n = node.ns
            if now is not None and now > node.t:
                n *= math.exp(-(now - node.t) * self._ks)
            r_slow = node.ys / node.es if node.es > 0 else f
            r = r_slow
            recent = len(node.window)
            if recent >= cfg.shift_min_samples and node.we > 0 and r_slow > 0:
                r_recent = node.wy / node.we
                if r_recent > 0 and abs(math.log(r_recent / r_slow)) > self._ln_shift:
                    r, n = r_recent, float(recent)
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
            factor = node.ys / node.es if node is not None and node.es > 0 else 1.0
        else:
            factor = self._factor_along(((), (category,), (tenant, category)), now)
        return summarize(tenant, category, group, factor)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state; `restore` rebuilds an equal tracker."""
        return {
            "version": 3,
            "nodes": [[list(k), *n.state()] for k, n in self._nodes.items()],
            "errors": [[t, c, *e.values()] for (t, c), e in self._errors.items()],
        }

    @classmethod
    def restore(cls, data: dict[str, Any], config: DriftConfig | None = None) -> DriftTracker:
        """Rebuild a tracker from `snapshot()` output."""
        if data.get("version") != 3:
            raise ValueError(f"unsupported drift snapshot version {data.get('version')!r}")
        tracker = cls(config)
        for key, t, ns, es, ys, window in data["nodes"]:
            tracker._nodes[tuple(key)] = _Node(
                tracker._window,
                float(t),
                (float(ns), float(es), float(ys)),
                [(float(a), float(b), float(c)) for a, b, c in window],
            )
        for tenant, category, *values in data["errors"]:
            tracker._errors[(str(tenant), str(category))] = ErrorSums(tuple(float(v) for v in values))
        return tracker
