"""The policy protocol: what the scheduler asks of an ordering policy, and what it may know of the service.

Implementations live in the top-level `policies` package; the core depends only on this protocol, so it
never imports them. Caller contract: `now` is passed in by the caller (the scheduler's injected clock, or
the simulator's virtual clock); a policy never reads the time itself, so simulation and production order
alike.

A policy class may also take options it is not given from the service it runs in (`PolicyContext`): a
classmethod ``derived_options(context) -> dict`` returns them, and the options a config gives win
(`policies.resolve_options`). The service's settings then live in one place (e.g. `bounded`'s horizon is
the queue timeout, not a second copy of it).

A policy class may also declare how it preempts, as a class attribute ``preemption``: a mapping of
`PreemptionConfig` fields (a peer whose scheduler preempts at once, as vLLM's priority policy does,
declares ``wait_s: 0``). The shells build their dispatcher with `preemption_for(policy, configured)`, so
such a policy runs as its scheduler does whatever the config's default; the policy's own logic stays in
the policy class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from driftsched.core.config import CoreConfig, PreemptionConfig
from driftsched.core.request import Ticket


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """The service settings a policy may derive its unset options from."""

    queue_timeout_s: float
    """Longest a request waits in its queue before it expires (the gateway's `queue_timeout_s`, the
    simulator's deadline)."""
    latency_slo_s: Mapping[str, float] = field(default_factory=dict)
    """Tenant -> its end-to-end latency objective, for the tenants that have one."""

    @classmethod
    def of(cls, config: CoreConfig, queue_timeout_s: float) -> PolicyContext:
        """The context of a service running `config`'s tenants under `queue_timeout_s`."""
        slos = {t.name: t.latency_slo_s for t in config.tenants if t.latency_slo_s is not None}
        return cls(queue_timeout_s, slos)


@runtime_checkable
class Policy(Protocol):
    """Orders queued tickets: `add`, `pop`, `peek`, `remove`, `__len__` (+ a completion hook)."""

    name: ClassVar[str]

    def add(self, ticket: Ticket, now: float) -> None: ...

    def pop(self, now: float) -> Ticket | None: ...

    def peek(self, now: float) -> Ticket | None: ...

    def remove(self, ticket: Ticket) -> bool: ...

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None: ...

    def __len__(self) -> int: ...


@runtime_checkable
class RankedPolicy(Policy, Protocol):
    """A policy that can rank any ticket, queued or running: lower runs first.

    Preemption needs it (a running ticket may be preempted only for a better-ranked waiting one). The
    rank of a ticket must not change while it runs: static keys (arrival, tier, size) qualify.
    """

    def rank(self, ticket: Ticket, now: float) -> tuple[float, ...]: ...


def preemption_for(policy: Policy, configured: PreemptionConfig) -> PreemptionConfig:
    """The preemption `policy` runs with: `configured`, with the fields its class declares in a
    ``preemption`` mapping (if any) in their place (module docstring)."""
    declared = getattr(type(policy), "preemption", None)
    if not declared:
        return configured
    return PreemptionConfig.model_validate({**configured.model_dump(), **dict(declared)})
