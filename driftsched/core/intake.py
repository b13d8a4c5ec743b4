"""Intake: validate a request, classify it and estimate it, producing a ticket for admission.

In the live system this runs in the ingress (with a local copy of the drift corrections), and the
central scheduler only sees the ticket; in the simulator the scheduler calls it directly.
"""

from __future__ import annotations

from collections.abc import Mapping

from driftsched.core.classify import Classifier
from driftsched.core.config import CoreConfig, TenantConfig
from driftsched.core.estimator import Estimator
from driftsched.core.request import Admission, RejectReason, Request, Ticket
from driftsched.core.slo import Objectives, service_tier_to_tier


class Intake:
    """Turns a `Request` into a `Ticket`, or into a rejection for invalid input or unknown tenant."""

    def __init__(self, config: CoreConfig, estimator: Estimator | None = None) -> None:
        self.tenants: Mapping[str, TenantConfig] = config.tenant_map()
        self.classifier = Classifier(config.classifier)
        self.estimator = estimator or Estimator(config.estimator, self.tenants)
        self.max_request_tokens = config.scheduler.max_request_tokens
        self.objective_table = config.objective_table()

    def validate(self, request: Request) -> Admission | None:
        """A rejection if the request is malformed or its tenant unknown, else None."""
        if request.tenant not in self.tenants:
            return Admission(None, RejectReason.UNKNOWN_TENANT, f"unknown tenant {request.tenant!r}")
        problem = None
        if request.prompt_tokens < 0:
            problem = f"prompt_tokens must be >= 0, got {request.prompt_tokens}"
        elif request.max_tokens < 1:
            problem = f"max_tokens must be >= 1, got {request.max_tokens}"
        elif request.prompt_tokens + request.max_tokens > self.max_request_tokens:
            problem = (
                f"prompt_tokens + max_tokens = {request.prompt_tokens + request.max_tokens} exceeds "
                f"the context limit {self.max_request_tokens}; shorten the prompt or lower max_tokens"
            )
        if problem is None:
            try:
                self.objectives(request)
            except ValueError as exc:
                problem = str(exc)
        return None if problem is None else Admission(None, RejectReason.INVALID, problem)

    def objectives(self, request: Request) -> tuple[int, Objectives]:
        """The tier a request runs at and the objectives it is held to: its tenant's at the tier its
        ``service_tier`` picks, tightened by what it asks for. `ValueError` for an ask outside its
        tenant's allowance or an unknown service tier."""
        tenant = self.tenants[request.tenant]
        tier = service_tier_to_tier(request.service_tier, tenant.tier, tenant.best_tier_or_own)
        table = self.objective_table
        base = tenant.objectives(table, tier)
        return tier, base.tighten(request.ttft_slo_s, request.tpot_slo_s, tenant.objective_floor(table))

    def ticket(self, request: Request, now: float) -> Ticket:
        """Classify and estimate a valid request (call `validate` first)."""
        tenant = self.tenants[request.tenant]
        tier, objectives = self.objectives(request)
        category = self.classifier.category(
            request.category, request.prompt_tokens, request.max_tokens, request.prompt_text
        )
        est = self.estimator.estimate(
            request.tenant, category, request.prompt_tokens, request.max_tokens, now
        )
        return Ticket(
            request_id=request.request_id,
            tenant=request.tenant,
            tier=tier,
            weight=tenant.weight,
            category=category,
            prompt_tokens=request.prompt_tokens,
            max_tokens=request.max_tokens,
            raw_estimate=est.raw,
            corrected_estimate=est.corrected,
            arrival_time=request.arrival_time,
            seq=0,
            deadline=request.deadline,
            bucket=est.bucket,
            ttft_slo_s=objectives.ttft_s,
            tpot_slo_s=objectives.tpot_s,
            prefix_blocks=request.prefix_blocks,
            session_id=request.session_id,
        )
