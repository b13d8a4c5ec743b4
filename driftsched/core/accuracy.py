"""Estimation accuracy: error sums of raw and corrected estimates per (tenant, category).

All-time sums (count, signed error, absolute error, squared error) merge by addition; the "recent"
sums (`rec_*`) decay with the tracker's recent half-life and merge like its other decayed sums.
`summarize` turns a group of them into the `DriftStat` row that metrics and reports show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ERROR_FIELDS = (
    "t", "n", "sum_raw", "abs_raw", "sq_raw", "sum_corr", "abs_corr", "sq_corr",
    "rec_n", "rec_raw", "rec_corr",
)  # fmt: skip


class ErrorSums:
    """Accuracy sums of one (tenant, category): plain for all-time, decayed (`rec_*`) for recent."""

    __slots__ = ERROR_FIELDS
    t: float
    n: float
    sum_raw: float
    abs_raw: float
    sq_raw: float
    sum_corr: float
    abs_corr: float
    sq_corr: float
    rec_n: float
    rec_raw: float
    rec_corr: float

    def __init__(self, values: tuple[float, ...] = (0.0,) * len(ERROR_FIELDS)) -> None:
        for name, value in zip(ERROR_FIELDS, values, strict=True):
            setattr(self, name, value)

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

    def merge(self, other: ErrorSums, kf: float) -> None:
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
        return tuple(getattr(self, name) for name in ERROR_FIELDS)


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


def summarize(tenant: str, category: str, group: list[ErrorSums], factor: float) -> DriftStat:
    """One report row from a group of error sums (all of a category's tenants, say)."""
    n = sum(e.n for e in group)
    rec_n = sum(e.rec_n for e in group) or 1.0
    d = n or 1.0
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
