"""Shortest job first on the drift-corrected output estimate, sized by the KV it will hold.

A request's size is the KV-token-seconds it will occupy, in decode steps: ``ĉ · (p + ĉ / 2)`` for
prompt p and corrected output estimate ĉ (its cache grows from p to p + ĉ over ĉ steps). On a
KV-bound engine that area, not the output length alone, is what a request takes from everyone queued
behind it: a 2,000-token document with a 128-token summary holds as much memory for as long as a
600-token chat with a 240-token answer. A prompt prefix already in a replica's cache is shared with the
requests that put it there, so p counts only the uncached prompt (`Ticket.uncached_prompt`).
``size="output"`` orders by ĉ alone (classic SJF).
"""

from __future__ import annotations

from typing import ClassVar

from driftsched.core.request import Ticket
from policies.base import HeapPolicy

SIZES = ("kv", "output")


def kv_area(ticket: Ticket) -> float:
    """Estimated KV-token-steps still to come: remaining output estimate times mean resident tokens."""
    c = ticket.remaining_estimate
    return c * (ticket.uncached_prompt + c / 2.0)


class SjfPolicy(HeapPolicy):
    """Smallest estimated size first; ties by arrival time, then admission order."""

    name: ClassVar[str] = "sjf"

    def __init__(self, size: str = "kv") -> None:
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        super().__init__()
        self.size = size

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        if self.size == "output":
            return (ticket.corrected_estimate, ticket.arrival_time)
        return (kv_area(ticket), ticket.arrival_time)
