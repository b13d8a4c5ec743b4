"""Strict priority tiers, first come first served within a tier."""

from __future__ import annotations

from typing import ClassVar

from driftsched.core.request import Ticket
from policies.base import HeapPolicy


class PriorityPolicy(HeapPolicy):
    """Lowest tier number first; ties by arrival time, then admission order."""

    name: ClassVar[str] = "priority"

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (ticket.tier, ticket.arrival_time)
