"""First come, first served across all tenants."""

from __future__ import annotations

import bisect
from collections import deque
from typing import ClassVar

from driftsched.core.policy import RankedPolicy
from driftsched.core.request import Ticket


class FifoPolicy(RankedPolicy):
    """Admission order (`seq`); a deque with lazy removal, O(1) per operation."""

    name: ClassVar[str] = "fifo"

    def __init__(self) -> None:
        self._queue: deque[Ticket] = deque()
        self._live: dict[str, Ticket] = {}

    def add(self, ticket: Ticket, now: float) -> None:
        self._live[ticket.request_id] = ticket
        queue = self._queue
        if queue and ticket.seq < queue[-1].seq:  # a resumed (preempted) ticket keeps its place; rare
            queue.insert(bisect.bisect([t.seq for t in queue], ticket.seq), ticket)
        else:
            queue.append(ticket)

    def rank(self, ticket: Ticket, now: float) -> tuple[float, ...]:
        """Admission order."""
        return (ticket.seq,)

    def _discard_dead_head(self) -> None:
        queue, live = self._queue, self._live
        while queue and live.get(queue[0].request_id) is not queue[0]:
            queue.popleft()

    def pop(self, now: float) -> Ticket | None:
        self._discard_dead_head()
        if not self._queue:
            return None
        ticket = self._queue.popleft()
        del self._live[ticket.request_id]
        return ticket

    def peek(self, now: float) -> Ticket | None:
        self._discard_dead_head()
        return self._queue[0] if self._queue else None

    def remove(self, ticket: Ticket) -> bool:
        if self._live.get(ticket.request_id) is not ticket:
            return False
        del self._live[ticket.request_id]
        if len(self._queue) > 2 * len(self._live) + 64:
            self._queue = deque(t for t in self._queue if self._live.get(t.request_id) is t)
        return True

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None:
        """FIFO needs no completion feedback."""

    def __len__(self) -> int:
        return len(self._live)
