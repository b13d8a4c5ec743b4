"""Queue-aware autoscaling: how many LLM replicas the scheduler's backlog needs.

`QueueAwareScaler.decide(now, backlog, target)` turns a `Backlog` (see `driftsched.core.backlog`)
into a replica count. With ``mu`` the output tokens/s of one saturated replica, the measurement
blended with the configured prior as ``prior_replica_s`` replica-seconds of pseudo-observation,

    mu      = (prior_tokens_per_s * prior_replica_s + served_tokens) / (prior_replica_s + saturated_replica_s)

``lambda`` the admitted token rate, ``shed`` the token rate SLO admission refused, ``Q`` the queued
tokens and, for each QoS tier ``k`` with queued work and an objective, ``Q_k`` the queued tokens of tiers
``0..k`` (the work at its tier or more important) and ``w_k`` its oldest wait:

    steady  = (lambda + shed) / (mu * target_utilization)      keep up with arrivals, refused ones too
    drain   = Q / (mu * drain_s)                               clear the backlog within drain_s
    prefill = P / (pi * drain_s)                               ... its prompts' prefill alone, too
    slo_k   = Q_k / (mu * max(min_budget_s, slo_headroom * latency_slo_s_k - w_k))
    risk_k  = min(A_k / (mu * slo_headroom * ttft_k), (max_risk_growth - 1) * replicas)   tier k at risk
    raw     = steady + max(drain, prefill, max_k slo_k, max_k risk_k)   both at once

``P`` is the queued prompts' uncached tokens (a prefix already in a replica's cache is not prefilled
again) and ``pi`` one replica's prefill tokens/s, the placement's figure (`Backlog.prefill_tokens_per_s`:
measured from the replicas' reports, its prior until then; `prior_prefill_tokens_per_s` only when the
backlog carries none), the same rate that placement predicts first tokens with: on prompt-heavy traffic
(long documents, agents' growing contexts) prefill, not decode, is what a backlog waits for. The
measured ``mu`` already pays for the prefill of the mix it was measured on, so the two terms are not
added: ``prefill`` bites when the queued prompts alone would outlast the drain budget.

``risk_k`` reads the scheduler's predicted risk (`driftsched.core.risk`): for a tier the scheduler
judges at risk, ``A_k`` is the corrected output work ahead of a new request of the tier and ``ttft_k``
its TTFT objective; the pool should be large enough to bring that work within ``slo_headroom`` of the
objective. Asked for at once that could be many replicas for a tier-0 objective of a second or two, and
capacity asked for now serves only after the replicas start, so the term adds at most
``max_risk_growth - 1`` times the pool (a busy pool at most multiplies by ``max_risk_growth`` per
decision); if the risk lasts, the next decision grows it again. Without the risk
term a pool whose admission sheds would look like one that keeps up: refused demand (``shed``) is why
it scales at all in overload.

Hysteresis and delays (the Serve shell gives Serve zero delays, so sim and server behave the same):

* **up** to ``ceil(raw)`` once ``ceil(raw) > target`` has held for ``upscale_delay_s`` (at once from
  zero replicas: a queue with no replica never drains);
* **down** to ``ceil(raw / (1 - hysteresis))`` once that is below ``target`` and has held for
  ``downscale_delay_s``: a pool only shrinks when the load fits the smaller pool with room to spare,
  so noise around a boundary does not flap it; any reading that does not want down restarts the wait;
* always within ``[min_replicas, max_replicas]``; an empty backlog with no arrivals decays to the minimum.

Caller contract: ``now`` is monotonic and passed in; the scaler reads no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from driftsched.core.backlog import Backlog

_EPS = 1e-9


class AutoscaleConfig(BaseModel):
    """Queue-aware autoscaling of the LLM replicas (`replicas.autoscaling`); off: a fixed pool."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)

    enabled: bool = False
    """Scale the replicas with the scheduler's backlog; off keeps `replicas.num_replicas` fixed."""
    min_replicas: int = Field(default=1, ge=0, le=64)
    """Fewest replicas. 0 is allowed: the backlog lives in the scheduler, so a queue scales up from 0."""
    max_replicas: int = Field(default=4, ge=1, le=64)
    """Most replicas (one GPU each); size the GPU node pool to it."""
    initial_replicas: int | None = Field(default=None, ge=0, le=64)
    """Replicas at deploy time (default: min_replicas)."""
    upscale_delay_s: float = Field(default=10.0, ge=0)
    """How long the backlog must want more replicas before they are added."""
    downscale_delay_s: float = Field(default=300.0, ge=0)
    """How long the load must fit fewer replicas before some are removed."""
    target_utilization: float = Field(default=0.8, gt=0, le=1)
    """Share of a replica's measured throughput that steady arrivals may use."""
    drain_s: float = Field(default=30.0, gt=0)
    """A backlog should be cleared within this many seconds (on top of the steady arrivals)."""
    slo_headroom: float = Field(default=0.5, gt=0, le=1)
    """A tier's queue should drain within this share of its tenants' latency_slo_s (the rest is
    for the requests' own generation); a tier at risk, its work ahead within this share of its TTFT
    objective."""
    min_budget_s: float = Field(default=30.0, gt=0)
    """Floor on a tier's drain budget, once its oldest request has used up its share of the objective.
    Keep it near the replicas' start-up time: capacity asked for now serves only after that."""
    prior_tokens_per_s: float = Field(default=1500.0, gt=0)
    """Output tokens/s of one saturated replica before the scheduler has measured it."""
    prior_prefill_tokens_per_s: float = Field(default=6000.0, gt=0)
    """Uncached prompt tokens/s one replica prefills (an L4 with an 8B FP8 model: ~91 TFLOP/s effective
    over 2 x 7.5 GFLOP a token, docs/simulator.md), for the backlog's prefill term when the backlog
    carries no rate of the placement's (`Backlog.prefill_tokens_per_s`)."""
    prior_replica_s: float = Field(default=60.0, ge=0)
    """Weight of the prior against the measurement, in saturated replica-seconds."""
    max_risk_growth: float = Field(default=2.0, ge=1.0)
    """Most a tier at risk multiplies a busy pool by in one decision: its term adds at most
    (max_risk_growth - 1) x the replicas (they arrive after their start-up time; a risk that lasts grows
    it again at the next decision). 1 turns the term off."""
    hysteresis: float = Field(default=0.15, ge=0, lt=0.9)
    """Spare share of capacity a smaller pool must keep before scaling down."""
    rate_window_s: float = Field(default=10.0, gt=0, le=600)
    """Window of the arrival-rate measurement: short enough to see a burst end (the delays and the
    hysteresis keep the pool from following its noise)."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often the Serve policy reads the scheduler's backlog."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas}); "
                "raise max_replicas or lower min_replicas"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must lie within min_replicas..max_replicas "
                f"({self.min_replicas}..{self.max_replicas}); change it or remove it"
            )
        return self


@dataclass(slots=True, frozen=True)
class ScaleDecision:
    """The replicas wanted now, the count before delays, and why (a bounded label for metrics)."""

    replicas: int
    desired: int
    reason: str
    """One of: steady, backlog, prefill, slo:<tier>, risk:<tier>, idle, hold."""
    raw: float


class QueueAwareScaler:
    """Replica count from the backlog with delays and hysteresis (see module docstring)."""

    def __init__(self, config: AutoscaleConfig) -> None:
        self.config = config
        self._want_up_since: float | None = None
        self._want_down_since: float | None = None

    def service_rate(self, backlog: Backlog) -> float:
        """Output tokens/s of one saturated replica: the measurement blended with the prior."""
        cfg = self.config
        weight = cfg.prior_replica_s
        total = weight + backlog.saturated_replica_s
        if total <= 0:
            return cfg.prior_tokens_per_s
        return (cfg.prior_tokens_per_s * weight + backlog.served_tokens) / total

    def demand(self, backlog: Backlog) -> tuple[float, str]:
        """Replicas the backlog needs (fractional) and the term that set it."""
        cfg = self.config
        mu = self.service_rate(backlog)
        demand = backlog.arrival_tokens_per_s + backlog.shed_tokens_per_s
        steady = demand / (mu * cfg.target_utilization)
        extra, reason = backlog.queued_tokens / (mu * cfg.drain_s), "backlog"
        pi = backlog.prefill_tokens_per_s or cfg.prior_prefill_tokens_per_s
        prefill = backlog.queued_prefill_tokens / (pi * cfg.drain_s)
        if prefill > extra:
            extra, reason = prefill, "prefill"
        ahead = 0.0
        for tier in backlog.tiers:  # ascending tier: `ahead` is the work at this tier or above
            ahead += tier.queued_tokens
            if tier.latency_slo_s is None:
                continue
            budget = max(cfg.min_budget_s, cfg.slo_headroom * tier.latency_slo_s - tier.oldest_wait_s)
            need = ahead / (mu * budget)
            if need > extra:
                extra, reason = need, f"slo:{tier.tier}"
        for tier in backlog.tiers:
            if not tier.at_risk or tier.ttft_slo_s is None:
                continue
            need = min(tier.ahead_tokens / (mu * cfg.slo_headroom * tier.ttft_slo_s),
                       (cfg.max_risk_growth - 1.0) * backlog.replicas)
            if need > extra:
                extra, reason = need, f"risk:{tier.tier}"
        if extra <= _EPS:
            reason = "steady" if steady > _EPS else "idle"
        return steady + extra, reason

    def decide(self, now: float, backlog: Backlog | None, target: int) -> ScaleDecision:
        """The replica count to run from `now` on, given the current `target`."""
        cfg = self.config
        if backlog is None:  # nothing known: keep what runs, within the bounds
            kept = min(max(target, cfg.min_replicas), cfg.max_replicas)
            return ScaleDecision(kept, kept, "hold", math.nan)
        raw, reason = self.demand(backlog)
        bounded = min(max(math.ceil(raw - _EPS), cfg.min_replicas), cfg.max_replicas)
        roomy = min(max(math.ceil(raw / (1.0 - cfg.hysteresis) - _EPS), cfg.min_replicas), cfg.max_replicas)
        if bounded > target:
            self._want_down_since = None
            if self._want_up_since is None:
                self._want_up_since = now
            if target == 0 or now - self._want_up_since >= cfg.upscale_delay_s - _EPS:
                self._want_up_since = None
                return ScaleDecision(bounded, bounded, reason, raw)
            return ScaleDecision(target, bounded, reason, raw)
        self._want_up_since = None
        if roomy < target:
            if self._want_down_since is None:
                self._want_down_since = now
            if now - self._want_down_since >= cfg.downscale_delay_s - _EPS:
                self._want_down_since = None
                return ScaleDecision(roomy, roomy, reason, raw)
            return ScaleDecision(target, roomy, reason, raw)
        self._want_down_since = None
        return ScaleDecision(target, target, reason, raw)
