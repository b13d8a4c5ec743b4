"""A heap-backed base for policies that order tickets by a static key, and the parts others share.

`HeapPolicy` orders by a static key; `LazyHeap` is the removable heap that policies with several queues
(bands, flows, classes, an on-time and a late queue) keep one of per queue; `ttft_deadline` is the TTFT
deadline that deadline orders read.

The protocol every policy implements (`Policy`, or `RankedPolicy` where it can rank running tickets)
lives in the core (`driftsched.core.policy`), with its caller contract: `now` is always passed in, never
read. Every policy here subclasses the protocol, so mypy checks that it conforms.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from driftsched.core.policy import Policy, PolicyContext, RankedPolicy
from driftsched.core.request import Ticket
from driftsched.core.slo import tier_objectives

__all__ = ["HeapPolicy", "LazyHeap", "Policy", "PolicyContext", "RankedPolicy", "ttft_deadline"]


def ttft_deadline(ticket: Ticket) -> float:
    """When the ticket's first token is due: its own TTFT deadline, or, for a ticket made without
    objectives (a test's, an old intake's), arrival plus its tier's default TTFT objective."""
    if math.isfinite(ticket.ttft_slo_s):
        return ticket.ttft_deadline
    return ticket.arrival_time + tier_objectives(ticket.tier).ttft_s


class LazyHeap:
    """Tickets in key order, with O(1) removal: a removed ticket's entry is skipped when it surfaces.

    An entry is live only while the ticket's latest push is that entry (a push counter, not the ticket
    object, identifies it), so a ticket removed and pushed again (a preempted request coming back) is
    never served from its stale entry. The heap is rebuilt when dead entries outnumber live ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[Any, ...]] = []
        self._live: dict[str, int] = {}  # request id -> counter of its live entry
        self._count = 0

    def push(self, key: tuple[float, ...], ticket: Ticket) -> None:
        self._count += 1
        self._live[ticket.request_id] = self._count
        heapq.heappush(self._heap, (*key, ticket.seq, self._count, ticket))

    def _clean_top(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][-1].request_id) != heap[0][-2]:
            heapq.heappop(heap)

    def peek(self) -> Ticket | None:
        self._clean_top()
        return self._heap[0][-1] if self._heap else None

    def pop(self) -> Ticket | None:
        self._clean_top()
        if not self._heap:
            return None
        ticket: Ticket = heapq.heappop(self._heap)[-1]
        del self._live[ticket.request_id]
        return ticket

    def discard(self, ticket: Ticket) -> bool:
        """Forget `ticket`; False if it is not here."""
        if self._live.pop(ticket.request_id, None) is None:
            return False
        if len(self._heap) > 2 * len(self._live) + 64:
            live = self._live
            self._heap = [e for e in self._heap if live.get(e[-1].request_id) == e[-2]]
            heapq.heapify(self._heap)
        return True

    def __contains__(self, ticket: Ticket) -> bool:
        return ticket.request_id in self._live

    def __len__(self) -> int:
        return len(self._live)


class HeapPolicy(RankedPolicy):
    """Tickets in the order of a static `key` (then admission order), kept in a `LazyHeap`; subclasses
    define `key`. Every operation is O(log n) amortised."""

    name: ClassVar[str] = "heap"
    time_options: ClassVar[Mapping[str, int]] = {}
    """Options measured in time, each with its power of seconds (1 for seconds, -1 for a rate per
    second), so a service on a scaled clock can convert them (`policies.options_on_clock`)."""

    @classmethod
    def derived_options(cls, context: PolicyContext) -> dict[str, Any]:
        """Options taken from the service when a config does not give them (none by default)."""
        return {}

    def __init__(self) -> None:
        self._queue = LazyHeap()

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        raise NotImplementedError

    def add(self, ticket: Ticket, now: float) -> None:
        self._queue.push(self.key(ticket), ticket)

    def pop(self, now: float) -> Ticket | None:
        return self._queue.pop()

    def peek(self, now: float) -> Ticket | None:
        return self._queue.peek()

    def remove(self, ticket: Ticket) -> bool:
        return self._queue.discard(ticket)

    def rank(self, ticket: Ticket, now: float) -> tuple[float, ...]:
        """The ticket's place in this order, queued or not (for preemption decisions)."""
        return (*self.key(ticket), ticket.seq)

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None:
        """Most policies need no completion feedback."""

    def __len__(self) -> int:
        return len(self._queue)
