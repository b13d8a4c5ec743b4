"""What the scheduler knows about a request: the request itself, its ticket, and admission outcomes.

A `Request` is what arrives (never its true output length). Admission turns it into a `Ticket`: the
small record the scheduler queues (tenant, tier, category, estimates, arrival time — not the prompt).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RejectReason(enum.StrEnum):
    """Why admission refused a request (each maps to one HTTP status in the ingress)."""

    INVALID = "invalid_request"  # 400
    UNKNOWN_TENANT = "unknown_tenant"  # 401
    REQUEST_QUOTA = "tenant_request_quota"  # 429
    TOKEN_QUOTA = "tenant_token_quota"  # 429
    TENANT_QUEUE_FULL = "tenant_queue_full"  # 429
    OVERLOADED = "system_overloaded"  # 503


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
