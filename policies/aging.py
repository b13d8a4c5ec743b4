"""Aging priority: a ticket's priority rises with its waiting time, so nothing starves.

Effective priority at time `now` is ``tier − (now − arrival_time) / age_step_s`` (lower runs first):
every `age_step_s` of waiting is worth one tier. Comparing two tickets at the same `now`, the `now`
terms cancel, so the order equals the static key ``tier · age_step_s + arrival_time``; a heap on that
key is exact at every `now`. Caller contract: `now` is accepted for the interface but not needed.

Bound: a ticket of tier k is overtaken only by tickets of tier j < k that arrived less than
(k − j) · age_step_s after it, so its extra wait over FIFO is bounded by that window's work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from driftsched.core.request import Ticket
from policies.base import HeapPolicy


class AgingPolicy(HeapPolicy):
    """Priority tiers that age linearly with waiting time (see module docstring)."""

    name: ClassVar[str] = "aging"
    time_options: ClassVar[Mapping[str, int]] = {"age_step_s": 1}

    def __init__(self, age_step_s: float = 10.0) -> None:
        if not age_step_s > 0:
            raise ValueError(f"age_step_s must be > 0 seconds, got {age_step_s}; try 10")
        super().__init__()
        self.age_step_s = age_step_s

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (ticket.tier * self.age_step_s + ticket.arrival_time,)
