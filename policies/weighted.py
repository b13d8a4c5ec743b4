"""Weighted fair share across tenants, accounted in tokens.

Each tenant i has a virtual service v_i = (tokens served to i) / w_i. The next ticket comes from the
backlogged tenant with the smallest v_i (ties: the tenant that became backlogged first); within a
tenant, lower tier first, then arrival. Dispatching charges the ticket's estimated tokens
(prompt + corrected output estimate) to v_i; when it finishes, `on_finish` charges the difference
between observed and estimated output tokens, so shares converge on real tokens, not guesses.

A tenant that comes back from idle starts at max(v_i, V), V being the virtual service of the last
dispatch, so idle time earns no credit to burst with later (as in start-time fair queueing).
Cost: O(log n) in the tenant's queue plus O(log T) in the tenant heap per operation.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

from driftsched.core.policy import Policy
from driftsched.core.request import Ticket


class WeightedFairPolicy(Policy):
    """Token-accounted weighted fair queueing across tenants (see module docstring)."""

    name: ClassVar[str] = "weighted"

    def __init__(self) -> None:
        self._queues: dict[str, list[tuple[Any, ...]]] = {}
        self._live: dict[str, Ticket] = {}
        self._live_per_tenant: dict[str, int] = {}
        self._vservice: dict[str, float] = {}
        self._pending_charge: dict[str, float] = {}
        self._ready: list[tuple[float, int, str]] = []  # (v_i, order, tenant) of backlogged tenants
        self._in_ready: set[str] = set()
        self._order = 0
        self._virtual_now = 0.0

    def _mark_ready(self, tenant: str) -> None:
        v = max(self._vservice.get(tenant, 0.0), self._virtual_now)
        self._vservice[tenant] = v
        self._order += 1
        heapq.heappush(self._ready, (v, self._order, tenant))
        self._in_ready.add(tenant)

    def add(self, ticket: Ticket, now: float) -> None:
        tenant = ticket.tenant
        self._live[ticket.request_id] = ticket
        self._live_per_tenant[tenant] = self._live_per_tenant.get(tenant, 0) + 1
        queue = self._queues.setdefault(tenant, [])
        self._order += 1
        heapq.heappush(queue, (ticket.tier, ticket.arrival_time, ticket.seq, self._order, ticket))
        if tenant not in self._in_ready:
            self._mark_ready(tenant)

    def _head(self, tenant: str) -> Ticket | None:
        queue, live = self._queues[tenant], self._live
        while queue and live.get(queue[0][-1].request_id) is not queue[0][-1]:
            heapq.heappop(queue)
        return queue[0][-1] if queue else None

    def _next_tenant(self) -> str | None:
        while self._ready:
            tenant = self._ready[0][2]
            if self._live_per_tenant.get(tenant, 0) > 0:
                return tenant
            heapq.heappop(self._ready)
            self._in_ready.discard(tenant)
            self._queues[tenant].clear()  # only dead entries remain
        return None

    def peek(self, now: float) -> Ticket | None:
        tenant = self._next_tenant()
        return None if tenant is None else self._head(tenant)

    def pop(self, now: float) -> Ticket | None:
        tenant = self._next_tenant()
        if tenant is None:
            return None
        ticket = self._head(tenant)
        assert ticket is not None  # live count > 0 guarantees a live head
        heapq.heappop(self._queues[tenant])
        del self._live[ticket.request_id]
        self._live_per_tenant[tenant] -= 1
        v, _, _ = heapq.heappop(self._ready)
        self._in_ready.discard(tenant)
        self._virtual_now = max(self._virtual_now, v)
        charge = ticket.cost_tokens + self._pending_charge.pop(tenant, 0.0)
        self._vservice[tenant] = v + charge / ticket.weight
        if self._live_per_tenant[tenant] > 0:
            self._order += 1
            heapq.heappush(self._ready, (self._vservice[tenant], self._order, tenant))
            self._in_ready.add(tenant)
        return ticket

    def remove(self, ticket: Ticket) -> bool:
        if self._live.get(ticket.request_id) is not ticket:
            return False
        del self._live[ticket.request_id]
        self._live_per_tenant[ticket.tenant] -= 1
        queue = self._queues[ticket.tenant]
        if len(queue) > 2 * self._live_per_tenant[ticket.tenant] + 64:
            live = self._live
            queue[:] = [e for e in queue if live.get(e[-1].request_id) is e[-1]]
            heapq.heapify(queue)
        return True

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None:
        """Charge observed minus estimated output tokens at the tenant's next dispatch."""
        delta = output_tokens - ticket.corrected_estimate
        self._pending_charge[ticket.tenant] = self._pending_charge.get(ticket.tenant, 0.0) + delta

    def __len__(self) -> int:
        return len(self._live)
