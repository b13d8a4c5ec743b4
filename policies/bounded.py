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

The defaults come from the paper workload's sweep (`benchmarks/bench_policies.py`): `size_ref` is the
area of a short chat answer (a 256-token prompt, 200 tokens out), so Q&A sits near u = 0.1, chats
near 0.7 and code or long-form above 0.9. `horizon_s` is the queue deadline (the simulator's 600 s):
a queued request lives that long at most, so small requests can still pass the whole backlog, while a
code request is passed by a chat only if the chat arrived within about 150 s of it (300 s with twice
the horizon, which kept up to 5% more of the median gain and a longer tail: load 1.0 p99 1.11x
FIFO's against 1.02x). Set it to `gateway.queue_timeout_s` (the shipped configs: 60 s).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from driftsched.core.request import Ticket
from policies.base import HeapPolicy
from policies.sjf import kv_area


class BoundedSjfPolicy(HeapPolicy):
    """Smallest estimated KV area first within a bounded head start (see module docstring)."""

    name: ClassVar[str] = "bounded"
    time_options: ClassVar[Mapping[str, int]] = {"horizon_s": 1, "tenant_horizon_s": 1}

    def __init__(
        self,
        horizon_s: float = 600.0,
        size_ref: float = 75_000.0,
        tenant_horizon_s: Mapping[str, float] | None = None,
    ) -> None:
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0 seconds, got {horizon_s}; try 600, the queue timeout")
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

    def offset_s(self, ticket: Ticket) -> float:
        """How much later than its arrival this ticket is ordered (below the bound)."""
        size = kv_area(ticket)
        return self.bound_s(ticket) * size / (size + self.size_ref)

    def bound_s(self, ticket: Ticket) -> float:
        """No ticket that arrived this long after `ticket`, or longer, is ever dispatched before it."""
        return min(self.horizon_s, self.tenant_horizon_s.get(ticket.tenant, self.horizon_s))

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (ticket.arrival_time + self.offset_s(ticket),)
