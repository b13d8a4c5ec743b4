r"""Admission-time output-token estimation.

The raw estimate uses only static knowledge: a per-category prior mean m_c, the tenant's prior scale
s_t, an optional prompt-length elasticity α_c, and the request's `max_tokens` M::

    raw = clip(m_c · s_t · (p / p_ref)^α_c, 1, M)

The corrected estimate applies the drift tracker's learned factor f (see `driftsched.core.drift`)::

    corrected = clip(raw · f(tenant, category, prompt_bucket), 1, M)

so it never exceeds `max_tokens`. Online learning happens entirely in the tracker, from the observed
lengths of finished requests; the raw estimate stays static so benchmarks can compare the two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from driftsched.core.config import EstimatorConfig, TenantConfig
from driftsched.core.drift import DriftTracker


def prompt_bucket(prompt_tokens: int) -> int:
    """Quarter-octave bucket of the prompt length: 0 for empty, then 4·log2(p + 1) rounded down.

    The drift tracker derives the half-octave level from it (bucket // 2).
    """
    return int(4.0 * math.log2(prompt_tokens + 1)) if prompt_tokens > 0 else 0


@dataclass(slots=True, frozen=True)
class Estimate:
    """Raw and drift-corrected output-token estimates of one request."""

    raw: float
    corrected: float
    bucket: int


class Estimator:
    """Priors plus the drift tracker's correction (formulas in the module docstring)."""

    def __init__(
        self,
        config: EstimatorConfig,
        tenants: Mapping[str, TenantConfig],
        tracker: DriftTracker | None = None,
    ) -> None:
        self.config = config
        self._scale = {name: t.output_scale for name, t in tenants.items()}
        self.tracker = tracker if tracker is not None else DriftTracker(config.drift)

    def raw(self, tenant: str, category: str, prompt_tokens: int, max_tokens: int) -> float:
        """The static prior estimate, before any feedback."""
        cfg = self.config
        value = cfg.priors.get(category, cfg.default_prior) * self._scale.get(tenant, 1.0)
        alpha = cfg.prompt_exponents.get(category)
        if alpha and prompt_tokens > 0:
            value *= (prompt_tokens / cfg.reference_prompt_tokens) ** alpha
        return min(float(max_tokens), max(1.0, value))

    def estimate(
        self, tenant: str, category: str, prompt_tokens: int, max_tokens: int, now: float
    ) -> Estimate:
        """Raw and corrected estimates for a new request."""
        raw = self.raw(tenant, category, prompt_tokens, max_tokens)
        bucket = prompt_bucket(prompt_tokens)
        factor = self.tracker.factor(tenant, category, bucket, now)
        return Estimate(raw, min(float(max_tokens), max(1.0, raw * factor)), bucket)

    def observe(
        self, tenant: str, category: str, estimate: Estimate, observed_tokens: int, now: float
    ) -> None:
        """Feed a finished request's observed output length back."""
        self.tracker.observe(
            tenant,
            category,
            estimate.bucket,
            estimate.raw,
            estimate.corrected,
            float(observed_tokens),
            now,
        )
