"""What the scheduler knows about a request: the request itself, its ticket, and admission outcomes.

A `Request` is what arrives (never its true output length). Admission turns it into a `Ticket`: the
small record the scheduler queues (tenant, tier, category, estimates, arrival time — not the prompt).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class RejectReason(enum.StrEnum):
    """Why admission refused a request (each maps to one HTTP status in the ingress)."""

    INVALID = "invalid_request"  # 400
    UNKNOWN_TENANT = "unknown_tenant"  # 401
    REQUEST_QUOTA = "tenant_request_quota"  # 429
    TOKEN_QUOTA = "tenant_token_quota"  # 429
    TENANT_QUEUE_FULL = "tenant_queue_full"  # 429
    OVERLOADED = "system_overloaded"  # 503
    SLO_UNREACHABLE = "slo_unreachable"  # 429: its tenant is above its fair share
    SYSTEM_SLO_UNREACHABLE = "system_slo_unreachable"  # 503: short even for the tenants within theirs
    TIER_HOLDBACK = "tier_holdback"  # 429: above its share while a tier as important is at risk


@dataclass(slots=True)
class Request:
    """An inference request as known at admission time."""

    request_id: str
    tenant: str
    prompt_tokens: int
    max_tokens: int
    arrival_time: float
    category: str | None = None
    """Category given by the caller, if any; otherwise the classifier picks one."""
    prompt_text: str | None = None
    """Prompt text for content cues; used by the classifier only, never queued."""
    deadline: float | None = None
    """Absolute time after which a still-queued request is expired by the scheduler."""
    service_tier: str | None = None
    """OpenAI's ``service_tier`` as the caller sent it (`driftsched.core.slo.service_tier_to_tier`)."""
    ttft_slo_s: float | None = None
    """A stricter time-to-first-token objective the caller asks for (seconds), within its tenant's
    allowance (`driftsched.core.slo.Objectives.tighten`)."""
    tpot_slo_s: float | None = None
    """A stricter time-per-output-token objective the caller asks for (seconds)."""
    prefix_blocks: tuple[int, ...] = ()
    """Chained hashes of the prompt's whole blocks (`driftsched.core.prefix`), for cache-aware placement."""
    session_id: str | None = None
    """The caller's conversation or agent session (`x-session-id`), a placement hint where no hashes are."""


@dataclass(slots=True, eq=False)
class Ticket:
    """A queued request: everything a policy may look at, and nothing it may not.

    `seq` is the admission order inside one scheduler and the final tie-break of every policy.
    """

    request_id: str
    tenant: str
    tier: int
    weight: float
    category: str
    prompt_tokens: int
    max_tokens: int
    raw_estimate: float
    corrected_estimate: float
    arrival_time: float
    seq: int
    deadline: float | None = None
    bucket: int = 0
    """Prompt-length bucket used as the finest drift-statistics key."""
    dispatch_time: float | None = field(default=None)
    queued_at: float = 0.0
    """When the ticket last entered the queue (admission, or requeue after a preemption)."""
    generated: int = 0
    """Output tokens produced by earlier runs (preempted, then resumed); already in `prompt_tokens`."""
    preemptions: int = 0
    ttft_slo_s: float = math.inf
    """The time-to-first-token objective this request is held to (its tenant's, or stricter if asked)."""
    tpot_slo_s: float = math.inf
    """The time-per-output-token objective this request is held to."""
    prefix_blocks: tuple[int, ...] = ()
    """Chained hashes of the prompt's whole blocks, never the prompt (`driftsched.core.prefix`)."""
    session_id: str | None = None
    """Session hint from the caller, used by placement only where `prefix_blocks` is empty."""
    cached_tokens: int = 0
    """Prompt tokens expected to be in a replica's prefix cache (the best match when it was admitted):
    the prefill and new KV it will not need. Size keys and the backlog count `uncached_prompt`."""

    @property
    def uncached_prompt(self) -> int:
        """Prompt tokens it must prefill where its prefix is cached (at least one, as an engine computes)."""
        return max(1, self.prompt_tokens - self.cached_tokens)

    @property
    def ttft_deadline(self) -> float:
        """When its first token is due: arrival + TTFT objective."""
        return self.arrival_time + self.ttft_slo_s

    @property
    def finish_target(self) -> float:
        """When it should finish: its TTFT deadline plus the corrected output estimate at the TPOT
        objective (an absolute use of the estimate: a wrong estimate moves the target)."""
        return self.ttft_deadline + self.corrected_estimate * self.tpot_slo_s

    @property
    def remaining_estimate(self) -> float:
        """Corrected estimate of the output tokens still to come (at least 1)."""
        return max(1.0, self.corrected_estimate - self.generated)

    @property
    def cost_tokens(self) -> float:
        """Estimated work of the request in tokens (prompt + corrected output estimate)."""
        return self.prompt_tokens + self.corrected_estimate


@dataclass(slots=True, frozen=True)
class Admission:
    """The outcome of submitting a request: a ticket, or a reason with a retry hint."""

    ticket: Ticket | None
    reason: RejectReason | None = None
    detail: str = ""
    retry_after_s: float | None = None

    @property
    def admitted(self) -> bool:
        return self.ticket is not None
