"""Shortest job first on the drift-corrected output estimate."""

from __future__ import annotations

from typing import ClassVar

from driftsched.core.request import Ticket
from policies.base import HeapPolicy


class SjfPolicy(HeapPolicy):
    """Smallest corrected estimate first; ties by arrival time, then admission order."""

    name: ClassVar[str] = "sjf"

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (ticket.corrected_estimate, ticket.arrival_time)
