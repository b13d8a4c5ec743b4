"""NVIDIA Dynamo's router queue, as two peers to compare with: WSPT, and EDF per class with DRR.

Source: ai-dynamo/dynamo ``docs/components/router/router-configuration.md`` (queue policies, the
pending-queue key) and the router's deficit-round-robin page
(``docs/components/router/deficit-round-robin-queue-scheduling.md``). Dynamo holds requests in its
router queue while its workers are busy; what leaves the queue first is what these order.

* `dynamo-wspt`, weighted shortest processing time: the highest ``(1 + priority) / input tokens`` first
  (short prompts and important requests first; Dynamo recommends it for mean TTFT, FCFS for the tail).
  Dynamo's priority grows with importance; the tier maps onto it as ``priority = lowest_tier − tier``
  (floored at 0), so tier 0 counts ``1 + lowest_tier`` times, the lowest tier once. Ties by arrival.
* `dynamo-edf`, policy classes: each class (here: a tier) queues by earliest deadline (EDF is the default
  queue policy of configured classes in Dynamo 1.7; the deadline here is the request's TTFT deadline),
  and deficit round robin shares dispatch between classes by input tokens: a class earns its quantum of
  tokens per round and dispatches its head while its deficit covers the head's cost
  ``max(1, uncached input tokens)``; an empty class's deficit is reset. Quanta default to Dynamo's
  sample profile (``examples/router/policy-class-queues.yaml``: 4096 tokens for the latency family,
  2048 standard, 1024 batch), tier by tier.

Neither reads an output estimate: their ``-uncorrected`` and ``-oracle`` runs order alike. No prefix
cache is modelled, so every input token is uncached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from driftsched.core.policy import Policy
from driftsched.core.request import Ticket
from policies.base import HeapPolicy, LazyHeap, ttft_deadline


def input_cost(ticket: Ticket) -> float:
    """Dynamo's scheduling cost: uncached input tokens (the best replica's prefix match at admission)."""
    return float(ticket.uncached_prompt)


class DynamoWsptPolicy(HeapPolicy):
    """Highest ``(1 + priority) / input tokens`` first; priority from the tier (module docstring)."""

    name: ClassVar[str] = "dynamo-wspt"
    admission: ClassVar[Mapping[str, Any]] = {"enabled": False}
    """It models a system without DriftSched's SLO-aware admission: everything that arrives queues."""

    def __init__(self, lowest_tier: int = 3) -> None:
        if lowest_tier < 0:
            raise ValueError(f"lowest_tier must be >= 0, got {lowest_tier}; use the least important tier")
        super().__init__()
        self.lowest_tier = lowest_tier

    def priority(self, ticket: Ticket) -> int:
        """Dynamo's priority (larger is more important) for the ticket's tier."""
        return max(0, self.lowest_tier - ticket.tier)

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (-(1 + self.priority(ticket)) / input_cost(ticket), ticket.arrival_time)


class DynamoEdfPolicy(Policy):
    """EDF within each tier, deficit round robin on input tokens between tiers (module docstring)."""

    name: ClassVar[str] = "dynamo-edf"
    admission: ClassVar[Mapping[str, Any]] = {"enabled": False}
    """It models a system without DriftSched's SLO-aware admission: everything that arrives queues."""

    def __init__(self, quanta: tuple[float, ...] = (4096.0, 2048.0, 1024.0)) -> None:
        if not quanta or not all(q > 0 and math.isfinite(q) for q in quanta):
            raise ValueError(f"quanta must be finite token counts > 0, one per tier, got {quanta}")
        self.quanta = quanta
        self._classes: dict[int, LazyHeap] = {}
        self._deficit: dict[int, float] = {}
        self._cursor = 0  # the class the ring is visited from next
        self._in_visit: int | None = None  # the class that dispatched last, still in its visit
        self._where: dict[str, int] = {}

    def quantum(self, tier: int) -> float:
        """The tier's quantum (the last listed for the tiers beyond the list)."""
        return self.quanta[min(tier, len(self.quanta) - 1)]

    def add(self, ticket: Ticket, now: float) -> None:
        self._classes.setdefault(ticket.tier, LazyHeap()).push(
            (ttft_deadline(ticket), ticket.arrival_time), ticket
        )
        self._where[ticket.request_id] = ticket.tier

    def _head_cost(self, tier: int) -> float:
        head = self._classes[tier].peek()
        assert head is not None  # only classes with work are asked
        return input_cost(head)

    def _choose(self) -> tuple[list[int], int, int] | None:
        """The ring of classes with work in visiting order, the winner's place in it, and its visits.

        A visit dispatches the class's head if its deficit covers the head's cost; otherwise the class
        earns one quantum and dispatches if that covers it, else the next class is visited. The class
        that dispatched last is still in its visit: it goes on while its deficit lasts, then the ring
        moves on without crediting it again. Rather than loop round by round, each class's visits to
        dispatch, ``v = max(1, ⌈(cost − deficit) / quantum⌉)``, are computed at once and the earliest
        (v, place) wins (the bulk credit of Dynamo's DRR).
        """
        ring = sorted(tier for tier, heap in self._classes.items() if len(heap))
        if not ring:
            return None
        start = next((i for i, tier in enumerate(ring) if tier >= self._cursor), 0)
        ring = ring[start:] + ring[:start]
        if self._in_visit == ring[0] and self._deficit.get(ring[0], 0.0) < self._head_cost(ring[0]):
            ring = ring[1:] + ring[:1]  # its visit is over: its next one comes after the others'
        best: tuple[int, int] | None = None
        for place, tier in enumerate(ring):
            short = self._head_cost(tier) - self._deficit.get(tier, 0.0)
            visits = max(1, math.ceil(short / self.quantum(tier)))
            if best is None or (visits, place) < best:
                best = (visits, place)
        assert best is not None
        return ring, best[1], best[0]

    def peek(self, now: float) -> Ticket | None:
        chosen = self._choose()
        return None if chosen is None else self._classes[chosen[0][chosen[1]]].peek()

    def pop(self, now: float) -> Ticket | None:
        chosen = self._choose()
        if chosen is None:
            return None
        ring, place, visits = chosen
        winner = ring[place]
        for p, tier in enumerate(ring):  # what each class earned on the visits made before the dispatch
            if tier == winner:
                covered = self._deficit.get(tier, 0.0) >= self._head_cost(tier)
                earned = 0 if covered else visits
            else:
                earned = visits if p < place else visits - 1
            self._deficit[tier] = self._deficit.get(tier, 0.0) + earned * self.quantum(tier)
        ticket = self._classes[winner].pop()
        assert ticket is not None
        self._deficit[winner] -= input_cost(ticket)
        del self._where[ticket.request_id]
        if len(self._classes[winner]):
            self._cursor, self._in_visit = winner, winner  # it keeps the turn while its deficit lasts
        else:
            self._deficit[winner] = 0.0  # an emptied class keeps no credit
            self._cursor, self._in_visit = winner + 1, None
        return ticket

    def remove(self, ticket: Ticket) -> bool:
        tier = self._where.pop(ticket.request_id, None)
        if tier is None or not self._classes[tier].discard(ticket):
            return False
        if not len(self._classes[tier]):
            self._deficit[tier] = 0.0
        return True

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None:
        """DRR charges the input tokens at dispatch; completion changes nothing."""

    def __len__(self) -> int:
        return len(self._where)
