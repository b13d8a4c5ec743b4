"""Small factories for core tests (vLLM-style `create_requests`)."""

from __future__ import annotations

from driftsched.core.clock import ManualClock
from driftsched.core.config import CoreConfig, TenantConfig
from driftsched.core.request import Ticket
from driftsched.core.scheduler import Scheduler
from policies import make_policy


def make_ticket(
    seq: int,
    tenant: str = "a",
    tier: int = 1,
    estimate: float = 100.0,
    arrival: float | None = None,
    weight: float = 1.0,
    prompt_tokens: int = 0,
) -> Ticket:
    return Ticket(
        request_id=f"r{seq}",
        tenant=tenant,
        tier=tier,
        weight=weight,
        category="chat",
        prompt_tokens=prompt_tokens,
        max_tokens=4096,
        raw_estimate=estimate,
        corrected_estimate=estimate,
        arrival_time=float(seq) if arrival is None else arrival,
        seq=seq,
    )


def make_config(*tenants: TenantConfig, **sections: object) -> CoreConfig:
    if not tenants:
        tenants = (TenantConfig(name="a"), TenantConfig(name="b"))
    return CoreConfig.model_validate({"tenants": [t.model_dump() for t in tenants], **sections})


def make_scheduler(
    policy: str = "fifo", *tenants: TenantConfig, **sections: object
) -> tuple[Scheduler, ManualClock]:
    clock = ManualClock()
    config = make_config(*tenants, **sections)
    return Scheduler(config, make_policy(policy), clock), clock
