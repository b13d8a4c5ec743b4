"""Typed configuration of the core, loaded once at the edge (CLI, Serve application builder).

Every field carries a docstring; validators state the offending value and how to fix it. Building a
config reads no files and no environment: `load_core_config` is the only function that touches YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from driftsched.core.errors import ConfigError
from driftsched.core.slo import TIER_OBJECTIVES, Objectives, tier_objectives

CATEGORIES: tuple[str, ...] = ("qa", "chat", "code", "summarize", "longform")

DEFAULT_PRIORS: dict[str, float] = {
    "qa": 64.0,
    "chat": 256.0,
    "code": 384.0,
    "summarize": 192.0,
    "longform": 768.0,
}

DEFAULT_QUEUE_TIMEOUT_S = 60.0
"""Longest a request waits in its queue before it is answered 504: the gateway's `queue_timeout_s`
default, the simulator's deadline, and what `bounded` takes as its horizon unless told otherwise."""


class _Strict(BaseModel):
    # No setting has a meaning at infinity or NaN; refusing them here keeps NaN out of every bound check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)


def _known_categories(value: dict[str, float]) -> dict[str, float]:
    """Refuse keys that are not categories: a misspelt one would be ignored without a word."""
    unknown = sorted(set(value) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; use {', '.join(CATEGORIES)}")
    return value


class TenantConfig(_Strict):
    """One tenant application sharing the pool."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Tenant name; used as a metric label, so keep it short."""
    tier: int = Field(default=1, ge=0, le=9)
    """QoS tier; 0 is the most important. `priority` and `aging` order by it."""
    weight: float = 1.0
    """Fair-share weight of the `weighted` policy (token-accounted)."""
    requests_per_minute: float | None = None
    """Request-rate quota (token bucket holding one minute of requests); None = unlimited."""
    tokens_per_minute: float | None = None
    """Token quota: prompt + estimated output tokens per minute; None = unlimited."""
    max_queued: int = 1000
    """Most requests this tenant may have waiting at once."""
    ttft_slo_s: float | None = None
    """Time-to-first-token objective in seconds: a request meets it when its first token comes back
    within this long of its arrival. None takes the tier's (`tier_objectives`)."""
    tpot_slo_s: float | None = None
    """Time-per-output-token objective in seconds (mean gap between tokens after the first). None takes
    the tier's (`tier_objectives`)."""
    latency_slo_s: float | None = None
    """Optional end-to-end latency objective, reported per tenant. Under `bounded` it is also this
    tenant's horizon (unless `policy_options.tenant_horizon_s` names the tenant): its requests are
    passed by at most this many seconds' worth of later, smaller work."""
    best_tier: int | None = Field(default=None, ge=0, le=9)
    """The most important tier this tenant's requests may ask for (``service_tier: priority``), and
    whose objectives bound how strict a request's own objective headers may be. None = its `tier`."""
    output_scale: float = 1.0
    """Prior multiplier on every category's output estimate for this tenant (before any feedback)."""

    @field_validator("weight", "output_scale")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"must be > 0, got {value}; use a positive number such as 1.0")
        return value

    @field_validator("requests_per_minute", "tokens_per_minute", "latency_slo_s", "ttft_slo_s", "tpot_slo_s")
    @classmethod
    def _positive_or_none(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"must be > 0 or null (unlimited), got {value}")
        return value

    @field_validator("max_queued")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}; raise it or remove the tenant")
        return value

    @model_validator(mode="after")
    def _best_tier(self) -> TenantConfig:
        if self.best_tier is not None and self.best_tier > self.tier:
            raise ValueError(
                f"best_tier {self.best_tier} is less important than tier {self.tier}; use at most {self.tier}"
            )
        return self

    def objectives(self, table: dict[int, Objectives], tier: int | None = None) -> Objectives:
        """This tenant's objectives at `tier` (default its own): its own targets over the tier's."""
        base = tier_objectives(self.tier if tier is None else tier, table)
        return Objectives(
            self.ttft_slo_s if self.ttft_slo_s is not None and tier in (None, self.tier) else base.ttft_s,
            self.tpot_slo_s if self.tpot_slo_s is not None and tier in (None, self.tier) else base.tpot_s,
            self.latency_slo_s,
        )

    def objective_floor(self, table: dict[int, Objectives]) -> Objectives:
        """The strictest objectives a request of this tenant may ask for (its best tier's, or its own
        where those are stricter)."""
        own, best = self.objectives(table), tier_objectives(self.best_tier_or_own, table)
        return Objectives(min(own.ttft_s, best.ttft_s), min(own.tpot_s, best.tpot_s))

    @property
    def best_tier_or_own(self) -> int:
        return self.tier if self.best_tier is None else self.best_tier


class ClassifierConfig(_Strict):
    """Thresholds of the rule-based classifier (see `driftsched.core.classify`)."""

    short_max_tokens: int = Field(default=64, ge=0)
    """A request with max_tokens at or below this and no other cue is `qa`."""
    long_prompt_tokens: int = Field(default=1500, ge=1)
    """A prompt at least this long with no other cue is `summarize`."""


class DriftConfig(_Strict):
    """Adaptive bias correction (formula in `driftsched.core.drift`)."""

    enabled: bool = True
    """False keeps corrected == raw (the `sjf-uncorrected` reference)."""
    half_life_s: float = 600.0
    """Half-life of the decayed statistics that set the correction in steady state."""
    shift_window: int = 32
    """Most recent observations kept per node; a shift restarts the statistics inside this window."""
    shift_ratio: float = 1.5
    """Recent and earlier observations whose (geometric) mean ratios differ by more than this factor
    count as a shift, if the difference is also significant (`shift_z`)."""
    shift_min_samples: int = 12
    """Size of the shortest recent suffix tested for a shift, and the least evidence before it."""
    shift_z: float = 5.0
    """Standard errors by which a shift must exceed noise: noisy streams need stronger evidence.
    The test runs after every observation, so a false alarm must be rare per test: about 1e-6 for
    normal noise at 5, against 1e-4 at 4 (a spurious restart every ~10^4 observations of a node)."""
    prior_strength: float = 8.0
    """Pseudo-observations pulling a node's factor toward its parent's (few-sample rule)."""
    recent_half_life_s: float = 60.0
    """Half-life of the "recent" error statistics reported beside the all-time ones."""
    prompt_buckets: bool = True
    """Learn finer factors per prompt-length bucket under each (tenant, category): half-octaves, then
    quarter-octaves, each shrunk toward the coarser one."""
    min_factor: float = 0.05
    """Lower clamp on the correction factor (see `max_factor`)."""
    max_factor: float = 20.0
    """Clamp on the correction factor, so one outlier cannot zero or explode estimates."""

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        if not (self.half_life_s > 0 and self.recent_half_life_s > 0):
            raise ValueError(
                f"half-lives must be > 0 seconds, got half_life_s={self.half_life_s}, "
                f"recent_half_life_s={self.recent_half_life_s}"
            )
        if not 1 <= self.shift_min_samples <= self.shift_window:
            raise ValueError(
                f"need 1 <= shift_min_samples <= shift_window, got {self.shift_min_samples} and "
                f"{self.shift_window}; lower shift_min_samples or enlarge shift_window"
            )
        if self.shift_ratio <= 1:
            raise ValueError(f"shift_ratio must be > 1, got {self.shift_ratio}; try 1.3")
        if not 0 < self.min_factor < 1 < self.max_factor:
            raise ValueError(
                f"need 0 < min_factor < 1 < max_factor, got {self.min_factor}, {self.max_factor}"
            )
        if not self.shift_z >= 0:
            raise ValueError(f"shift_z must be >= 0 standard errors, got {self.shift_z}; try 5")
        if self.prior_strength < 0:
            raise ValueError(f"prior_strength must be >= 0, got {self.prior_strength}")
        return self


class EstimatorConfig(_Strict):
    """Admission-time output-token estimator (see `driftsched.core.estimator`)."""

    priors: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRIORS))
    """Prior mean output tokens per category, before any feedback."""
    default_prior: float = Field(default=256.0, gt=0)
    """Prior for a category missing from `priors`."""
    prompt_exponents: dict[str, float] = Field(default_factory=lambda: {"summarize": 0.3})
    """Output grows as (prompt_tokens / reference_prompt_tokens) ** exponent for these categories."""
    reference_prompt_tokens: float = Field(default=512.0, gt=0)
    """Prompt length at which `prompt_exponents` leave the prior unchanged."""
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @field_validator("priors")
    @classmethod
    def _priors_positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not v > 0}
        if bad:
            raise ValueError(f"priors must be > 0 tokens, got {bad}; set a positive mean length")
        return _known_categories(value)

    @field_validator("prompt_exponents")
    @classmethod
    def _exponent_categories(cls, value: dict[str, float]) -> dict[str, float]:
        return _known_categories(value)


class PreemptionConfig(_Strict):
    """Preempt-and-resume: when may a running request give way to better-ranked waiting work.

    A running request is preempted only when the policy's head has waited `wait_s` (no slot or KV freed
    for it meanwhile), the victim ranks below the head in the policy's order, has run `min_run_s`, has
    been preempted fewer than `max_per_request` times, and has more than `near_end_tokens` of its
    estimate left. It goes back to its queue and later resumes from the tokens it generated.
    """

    enabled: bool = False
    """Off by default. A preempted request gives back its slot but not its work: it resumes by
    prefilling its prompt and every token it generated again, work that lengthens the wait of everyone
    behind it. With a replica's slots (`max_num_seqs`) the interactive tier's head seldom waits
    `wait_s` for one, so preemption rarely fires and gains that tier little, while each firing costs a
    recompute. Turn it on where a few slots are held by long runners and a tier's objective is at
    risk. Policies without a rank (`weighted`) never preempt."""
    wait_s: float = 2.0
    """How long the head must have waited before anything is preempted for it."""
    min_run_s: float = 1.0
    """A request runs at least this long before it can be preempted (no thrashing)."""
    max_per_request: int = 1
    """Most times one request may be preempted."""
    near_end_tokens: int = 32
    """A request whose remaining estimate is at most this many tokens is left to finish."""
    max_candidates: int = 8
    """Running requests examined per attempt, worst-ranked first (bounds the cost of a dispatch)."""

    @model_validator(mode="after")
    def _check(self) -> PreemptionConfig:
        if self.wait_s < 0 or self.min_run_s < 0:
            raise ValueError(
                f"wait_s and min_run_s must be >= 0 seconds, got {self.wait_s} and {self.min_run_s}"
            )
        if self.max_per_request < 0 or self.near_end_tokens < 0 or self.max_candidates < 1:
            raise ValueError(
                "need max_per_request >= 0, near_end_tokens >= 0, max_candidates >= 1; got "
                f"{self.max_per_request}, {self.near_end_tokens}, {self.max_candidates}"
            )
        return self


class AdmissionConfig(_Strict):
    """SLO-aware admission and per-tier holdback (`driftsched.core.admission`, `driftsched.core.risk`).

    The scheduler measures the pool's output tokens/s while it is saturated and predicts a new request's
    wait as the corrected output estimates queued ahead of it divided by that rate. It answers at once
    (instead of letting it time out in the queue) a request that cannot meet its TTFT objective, never
    one of a tenant within its fair share for another tenant's burst, and refuses new work of tenants
    above their share while a tier at least as important is at risk. Nothing is refused before the
    rate has been measured (`min_measured_s`).
    """

    enabled: bool = True
    """Early rejection and holdback on. Off: only quotas and queue caps refuse requests, and a request
    that cannot make its objective waits until its queue deadline."""
    shed_margin: float = Field(default=1.5, ge=1.0)
    """A request is refused as unreachable only when its predicted wait exceeds this many times its
    TTFT objective. The prediction is a lower bound for tier- and deadline-ordered policies (and FIFO),
    and this margin covers the error of the measured rate: 1 sheds at the first predicted miss."""
    risk_share: float = Field(default=0.5, gt=0, le=1)
    """A tier is at risk when its most urgent queued request is projected to wait more than this share
    of its TTFT objective (waited so far plus predicted wait); the rest of the objective is slack for the
    prediction's error and the prefill."""
    holdback: bool = True
    """While a tier is at risk, (1) its most urgent request is dispatched before the policy's head when
    that head is of a less important tier and of a tenant asking for more than its fair share, and
    (2) new requests in that tier, or in a less important one once it is projected past
    `holdback_share`, are refused (429 `tier_holdback`) from tenants whose admitted demand already
    exceeds their fair share: they are held to their share, so about the physical excess is shed, and
    never a tenant within its share."""
    holdback_share: float = Field(default=1.0, gt=0, le=2)
    """Requests of a less important tier are held back (2 in `holdback`) only while the more important
    tier is projected past this share of its TTFT objective (1: projected to miss it); those of the
    at-risk tier itself from `risk_share` on. A less important request waits behind anyway (its
    deadline is later): refused from `risk_share` on (0.5), the lowest tier of the `saas` mix lost 4 to
    11 points of attainment at loads 0.7 to 0.95 to bursts that queueing absorbs, and goodput fell."""
    reserve: float = Field(default=0.1, ge=0, lt=1)
    """Share of the requests in flight that less important tiers keep during a holdback: below it, the
    policy's head goes first even while a more important tier is at risk (no tier starves)."""
    rate_half_life_s: float = Field(default=60.0, gt=0)
    """Half-life of the service-rate measurement, in seconds during which work waited (an idle spell
    does not age it: the hardware's speed is remembered)."""
    min_measured_s: float = Field(default=10.0, ge=0)
    """Seconds with waiting work the rate must have been measured over before anything is refused."""
    share_half_life_s: float = Field(default=60.0, gt=0)
    """Half-life of each tenant's measured demand (estimated output tokens/s it sent): the recent
    window over which a tenant is judged within or above its fair share."""
    share_tolerance: float = Field(default=0.1, ge=0)
    """A tenant is above its fair share when its demand exceeds its share by more than this fraction
    (measurement noise at the boundary does not make it so)."""
    max_retry_after_s: float = Field(default=60.0, ge=1)
    """Largest Retry-After given with an admission refusal."""


PLACEMENT_RULES = ("driftsched", "most-free-kv", "round-robin", "ray-prefix", "llmd-sticky", "dynamo-kv")
"""Placement rules (`driftsched.core.placement`): ours first, then the peers' to compare with."""


class PlacementConfig(_Strict):
    """Where a dispatched request goes: the fit filter, then a rule that scores the replicas it fits."""

    rule: str = "driftsched"
    """One of `PLACEMENT_RULES`. `driftsched` sends a request where its prompt's prefix is cached unless
    that replica's queued prefill would cost more than the cache saves; `most-free-kv` ignores the
    prefix cache; the others are the peers' rules (docs/scheduling.md#placement)."""
    block_tokens: int = Field(default=256, ge=16)
    """Tokens per prefix hash block; a multiple of the engine's KV block (vLLM: 16)."""
    index_ttl_s: float = Field(default=120.0, gt=0)
    """A replica's prefix index forgets blocks not used for this long (`driftsched.core.prefix`)."""
    prefill_tokens_per_s: float = Field(default=0.0, ge=0)
    """One replica's prefill rate, tokens/s, until its own is measured from its reports (0: 4,096, about
    an 8B model on an L4). The rules turn queued prefill into seconds with it (`driftsched`: expected
    time to first token; `llmd-sticky`: its saturation threshold), so only its order of magnitude
    matters before the measurement takes over."""
    affinity_slack: float = Field(default=1.0, ge=0)
    """`driftsched` keeps a request on the replica holding its prefix while its first token is expected
    there within this share of its TTFT objective (or no later than anywhere else); past it, that
    replica is saturated for the request and the soonest replica takes it. 1 keeps a session where its
    context lives as long as it can still make its objective there; 0 moves it whenever another replica
    is momentarily sooner, copying its context around the pool and evicting other sessions' prefixes
    (a lower hit rate and a slower median TTFT in our runs)."""
    affinity_min_share: float = Field(default=0.25, ge=0, le=1)
    """`driftsched` follows a prefix only when its holder has at least this share of the prompt cached
    more than the replica holding least; a shorter shared part (a system prompt before a long document)
    is not worth concentrating a tenant's requests on the replicas that hold it (Ray's router uses 0.1
    of the prompt). A larger share spreads work more evenly, a smaller one follows more prefixes."""
    spread_window_s: float = Field(default=0.5, ge=0)
    """`driftsched` starts a new context (a request no replica holds a prefix of worth following) on the
    replica running the fewest requests among those where its first token is expected within this many
    seconds of the soonest, evening the sessions, and the KV they will hold, across the replicas. 0.5 s
    is a third of the tightest default TTFT objective (tier 0's 1.5 s); 0 places new contexts where
    their first token comes soonest, whatever runs there."""
    balance_slack: float = Field(default=0.3, ge=0)
    """`driftsched` places a request on a replica only while the work granted to it lately (prompt
    tokens to prefill and output tokens expected, decayed with a one-minute half-life) is within 1 +
    this share of the pool's mean, so no prefix or tenant piles its work on the replicas that hold its
    cache. 0.3 kept every replica's share of a run's work within about 1.1x the mean in our runs; a
    larger share keeps more requests on their prefix's replica, a smaller one balances at the cache's
    expense."""
    tpot_guard: bool = True
    """Keep each replica's decode pace within the tightest TPOT objective of the requests it runs: the
    pace (seconds per step, measured from the replicas' progress reports) is held under that objective
    by lowering the share of the replica's KV that new grants may fill while it is too slow, and raising
    it back while there is room (`driftsched.core.placement`, "TPOT guard"). A step reads every running
    request's KV, so a fuller KV is a slower step for every stream on the replica. Off: replicas fill
    their KV whatever the pace, which serves the most tokens and lets tight-TPOT streams miss."""

    @field_validator("rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        if value not in PLACEMENT_RULES:
            raise ValueError(f"unknown placement rule {value!r}; choose one of {', '.join(PLACEMENT_RULES)}")
        return value

    @field_validator("block_tokens")
    @classmethod
    def _block(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16 (vLLM's KV block), got {value}; try 256")
        return value


class SchedulerConfig(_Strict):
    """Policy and system-wide admission limits."""

    policy: str = Field(default="slo", min_length=1)
    """A registered policy name (fifo, priority, weighted, sjf, aging, bounded, relative, slo, or a
    peer's: vllm-priority, llmd-flow, dynamo-wspt, dynamo-edf) or "module:Class". `slo` (earliest TTFT
    deadline, smaller requests a bounded step ahead, requests already past their deadline last) meets
    more tenants' TTFT objectives than `bounded` or FIFO at every load measured
    (docs/results/slo.md). The name and `policy_options` are checked by the entry points, which may
    import policies."""
    policy_options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the policy's constructor (e.g. aging's `age_step_s`). Options the policy
    derives from the service are filled in where not given (`bounded`: `horizon_s` from the gateway's
    `queue_timeout_s`, `tenant_horizon_s` from the tenants' `latency_slo_s`)."""
    max_queued_total: int = Field(default=8000, ge=1)
    """Requests waiting across all tenants beyond which admission answers `system_overloaded`."""
    max_request_tokens: int = Field(default=32_768, ge=2)
    """Largest prompt_tokens + max_tokens accepted (the model's context length)."""
    overload_retry_after_s: float = Field(default=1.0, ge=0)
    """Retry hint given with `system_overloaded`."""
    kv_watermark: float = Field(default=0.01, ge=0, lt=1)
    """Share of a replica's KV cache kept free when placing work (vLLM keeps a similar watermark)."""
    kv_growth_tokens: int = 128
    """H: KV room held back per running request for its next H output tokens (fewer near its
    estimated end), and for a new request's first H, when placing work (`driftsched.core.placement`).
    0 places by the prompt alone, so running requests grow into engine preemptions (recompute) once
    the cache fills; a large H leaves cache idle that could hold more requests. The default sits between
    the two (compare values with `benchmarks/bench_policies.py --scheduler '{"kv_growth_tokens": H}'`)."""
    preemption: PreemptionConfig = Field(default_factory=PreemptionConfig)
    """Preempt-and-resume settings (see `PreemptionConfig`)."""
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    """SLO-aware admission and per-tier holdback (see `AdmissionConfig`)."""
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    """Cache-aware placement (see `PlacementConfig`)."""

    @field_validator("kv_growth_tokens")
    @classmethod
    def _growth(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0 tokens, got {value}; use 0 to reserve no growth, or e.g. 64")
        return value


class ObjectivesConfig(_Strict):
    """A tier's default latency objectives (see `driftsched.core.slo`)."""

    ttft_s: float = Field(gt=0)
    """Time-to-first-token target, seconds."""
    tpot_s: float = Field(gt=0)
    """Time-per-output-token target, seconds."""


def _default_tier_objectives() -> dict[int, ObjectivesConfig]:
    return {tier: ObjectivesConfig(ttft_s=o.ttft_s, tpot_s=o.tpot_s) for tier, o in TIER_OBJECTIVES.items()}


class CoreConfig(_Strict):
    """Everything the scheduling core needs."""

    tenants: list[TenantConfig]
    tier_objectives: dict[int, ObjectivesConfig] = Field(default_factory=_default_tier_objectives)
    """Each tier's objectives, taken by a tenant that states none of its own; a tier not listed takes
    the nearest more important one's. The defaults and the reason for each are in
    `driftsched.core.slo.TIER_OBJECTIVES`."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    estimator: EstimatorConfig = Field(default_factory=EstimatorConfig)

    @field_validator("tenants")
    @classmethod
    def _unique(cls, value: list[TenantConfig]) -> list[TenantConfig]:
        if not value:
            raise ValueError("at least one tenant is required; add an entry under `tenants`")
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tenant names must be unique, repeated: {dupes}; rename them")
        return value

    @field_validator("tier_objectives")
    @classmethod
    def _tiers(cls, value: dict[int, ObjectivesConfig]) -> dict[int, ObjectivesConfig]:
        bad = sorted(t for t in value if not 0 <= t <= 9)
        if bad or not value:
            raise ValueError(f"tiers must be 0..9 and at least one listed, got {sorted(value)}")
        return value

    def tenant_map(self) -> dict[str, TenantConfig]:
        return {t.name: t for t in self.tenants}

    def objective_table(self) -> dict[int, Objectives]:
        """`tier_objectives` as `Objectives`, for `TenantConfig.objectives`."""
        return {tier: Objectives(o.ttft_s, o.tpot_s) for tier, o in self.tier_objectives.items()}

    def objectives(self) -> dict[str, Objectives]:
        """Every tenant's objectives (its own targets over its tier's)."""
        table = self.objective_table()
        return {t.name: t.objectives(table) for t in self.tenants}


def parse_core_config(data: dict[str, Any]) -> CoreConfig:
    """Validate a mapping, turning pydantic's error into a ConfigError with one line per problem."""
    try:
        return CoreConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        raise ConfigError("invalid DriftSched config:\n" + "\n".join(lines)) from None


def load_core_config(path: str | Path) -> CoreConfig:
    """Read a YAML file holding a CoreConfig mapping."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_core_config(data)
