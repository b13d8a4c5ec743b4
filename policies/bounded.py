"""Bounded SJF: smaller requests get a head start over larger ones, never longer than a horizon.

A ticket is ordered as if it had arrived ``o = horizon_s · u`` later than it did, with
``u = s / (s + size_ref)`` in [0, 1) for its size s, the estimated KV area of `policies.sjf`
(``ĉ · (p + ĉ/2)`` for prompt p and the corrected estimate ĉ of the output still to come):

    key = arrival_time + horizon_s · s / (s + size_ref)

Within a window of `horizon_s` the order is smallest first, as in `sjf`; across longer gaps it is
FIFO. `u` saturates, so the large requests (code after a drift, long-form) differ little from one
another and are served close to their arrival order instead of the largest starving. A tenant listed in
`tenant_horizon_s` gets its own, usually tighter, horizon: ``o = min(horizon_s, tenant_horizon_s[t]) · u``
(e.g. its latency SLO: its requests then wait behind at most that much later traffic). The horizon is
scaled, not clipped, so the tenant's own requests stay in size order among themselves (a clipped
offset gives all of its larger requests the same offset, and them FIFO order).

Bound: a ticket i is overtaken only by tickets j with ``a_j + o_j < a_i + o_i``, i.e. that arrived
less than ``o_i − o_j ≤ o_i < horizon_s`` after it (less than its tenant's horizon, if it has one);
ties go to admission order. So its extra wait over FIFO is at most the service of the work that
arrives within `horizon_s` after it. Caller contract: `now` is not needed (the key is static), so the
heap is exact at every `now` and costs O(log n) per operation, as `sjf` does.

Trade-off: small requests pass a backlog only by adding their service to the wait of the large ones
they pass, so under a sustained backlog the largest requests wait longer than under FIFO (up to about
1/(1 − s) times, s being the small requests' share of the work) and a smaller `horizon_s` buys the
tail back with the median. Ordering cannot shrink a backlog that outlives the queue timeout.

Defaults. `size_ref` is the area of a short chat answer (a 256-token prompt, 200 tokens out), so Q&A
sits near u = 0.1, chats near 0.7 and code or long-form above 0.9. `horizon_s` is the queue timeout
(`derived_options`: the gateway's `queue_timeout_s`, or the simulator's deadline): a queued request
lives that long at most, so a longer horizon would order a large request behind work that arrives
after its own deadline (it could then only expire), and a shorter one gives up size order among
requests that could all still be served. A tenant with a
`latency_slo_s` gets it as its own horizon: its requests then wait behind at most that much later
traffic. `tenant_horizon_s`, where given, wins tenant by tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S
from driftsched.core.policy import PolicyContext
from driftsched.core.request import Ticket
from policies.base import HeapPolicy
from policies.sjf import kv_area


class BoundedSjfPolicy(HeapPolicy):
    """Smallest estimated KV area first within a bounded head start (see module docstring)."""

    name: ClassVar[str] = "bounded"
    time_options: ClassVar[Mapping[str, int]] = {"horizon_s": 1, "tenant_horizon_s": 1}

    def __init__(
        self,
        horizon_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        size_ref: float = 75_000.0,
        tenant_horizon_s: Mapping[str, float] | None = None,
    ) -> None:
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0 seconds, got {horizon_s}; use the queue timeout")
        if not size_ref > 0:
            raise ValueError(f"size_ref must be > 0 token-steps, got {size_ref}; try 75000")
        caps = dict(tenant_horizon_s or {})
        bad = {tenant: cap for tenant, cap in caps.items() if not cap >= 0}
        if bad:
            raise ValueError(f"tenant_horizon_s must be >= 0 seconds, got {bad}; use the tenant's SLO")
        super().__init__()
        self.horizon_s = horizon_s
        self.size_ref = size_ref
        self.tenant_horizon_s = caps

    @classmethod
    def derived_options(cls, context: PolicyContext) -> dict[str, Any]:
        """The horizon is the queue timeout; a tenant's, its latency objective (module docstring)."""
        return {"horizon_s": context.queue_timeout_s, "tenant_horizon_s": dict(context.latency_slo_s)}

    def offset_s(self, ticket: Ticket) -> float:
        """How much later than its arrival this ticket is ordered (below the bound)."""
        size = kv_area(ticket)
        return self.bound_s(ticket) * size / (size + self.size_ref)

    def bound_s(self, ticket: Ticket) -> float:
        """No ticket that arrived this long after `ticket`, or longer, is ever dispatched before it."""
        return min(self.horizon_s, self.tenant_horizon_s.get(ticket.tenant, self.horizon_s))

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (ticket.arrival_time + self.offset_s(ticket),)
