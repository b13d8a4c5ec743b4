"""Relative SJF: a head start proportional to the ticket's own estimated size, and a wait cap.

A ticket is ordered as if it had arrived ``o`` later than it did, ``o`` growing linearly with its size
s, the estimated KV area of `policies.sjf` (``ĉ · (p + ĉ/2)`` for prompt p and the corrected estimate
ĉ of the output still to come), up to a horizon:

    key = arrival_time + o,    o = min(horizon_s, s / area_per_s)

Unlike `bounded`, whose offset saturates (every large request gets about the same one, so large ones
run in arrival order), the offset keeps growing with size: a 2,000-token code answer is ordered behind
a 1,000-token article that arrived a little later. On the KV-bound engine this is also what keeps the
replicas packed under a backlog: the largest requests are admitted last, so fewer fresh prompts are
preempted and recomputed when the cache fills (`benchmarks/bench_policies.py` compares the policies).

**Wait cap.** Once the oldest queued ticket has waited `max_wait_s`, it goes next, whatever its size:
overdue tickets run in arrival order. Off by default (inf): under a sustained backlog every ticket
becomes overdue and the order falls back to FIFO, losing the packing gain.

Bound: a ticket i is dispatched after a ticket j that arrived later only if j was dispatched while i
had waited less than `max_wait_s`, and ``a_j + o_j < a_i + o_i``, i.e. j arrived less than
``o_i − o_j ≤ o_i ≤ horizon_s`` after i (ties go to admission order). So the tickets that overtake i
arrived within ``min(horizon_s, s_i / area_per_s)`` after it, a window proportional to its own size,
and none overtakes it once it has waited `max_wait_s`. Caller contract: `now` is passed in (only the wait
cap reads it); the key is static, so `rank` does not change while a ticket runs. Cost: O(log n) per
operation (a heap on the key and one on arrival, both with lazy removal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

from driftsched.core.request import Ticket
from policies.base import HeapPolicy, LazyHeap
from policies.sjf import kv_area


class RelativeSjfPolicy(HeapPolicy):
    """Smallest estimated KV area first, within a head start proportional to size (module docstring)."""

    name: ClassVar[str] = "relative"
    time_options: ClassVar[Mapping[str, int]] = {"area_per_s": -1, "horizon_s": 1, "max_wait_s": 1}

    def __init__(
        self,
        area_per_s: float = 3000.0,
        horizon_s: float = 1200.0,
        max_wait_s: float = math.inf,
    ) -> None:
        if not area_per_s > 0:
            raise ValueError(f"area_per_s must be > 0 token-steps per second, got {area_per_s}; try 3000")
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0 seconds, got {horizon_s}; try 1200")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds, got {max_wait_s}; try inf (no cap) or 480")
        super().__init__()
        self.area_per_s = area_per_s
        self.horizon_s = horizon_s
        self.max_wait_s = max_wait_s
        self._by_arrival = LazyHeap()  # the same tickets by arrival, for the max_wait_s cap

    def offset_s(self, ticket: Ticket) -> float:
        """How much later than its arrival this ticket is ordered (at most `horizon_s`)."""
        return min(self.horizon_s, kv_area(ticket) / self.area_per_s)

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (ticket.arrival_time + self.offset_s(ticket),)

    def add(self, ticket: Ticket, now: float) -> None:
        super().add(ticket, now)
        self._by_arrival.push((ticket.arrival_time,), ticket)

    def _overdue(self, now: float) -> Ticket | None:
        """The oldest queued ticket if it has waited `max_wait_s` (None otherwise)."""
        oldest = self._by_arrival.peek()
        return oldest if oldest is not None and now - oldest.arrival_time >= self.max_wait_s else None

    def peek(self, now: float) -> Ticket | None:
        overdue = self._overdue(now)
        return overdue if overdue is not None else super().peek(now)

    def pop(self, now: float) -> Ticket | None:
        ticket = self._overdue(now)
        if ticket is None:
            ticket = super().pop(now)
        else:
            super().remove(ticket)
        if ticket is not None:
            self._by_arrival.discard(ticket)
        return ticket

    def remove(self, ticket: Ticket) -> bool:
        if not super().remove(ticket):
            return False
        self._by_arrival.discard(ticket)
        return True
