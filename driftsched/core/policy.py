"""The policy protocol: what the scheduler asks of an ordering policy.

Implementations live in the top-level `policies` package; the core depends only on this protocol, so it
never imports them. Caller contract: `now` is passed in by the caller (the scheduler's injected clock, or
the simulator's virtual clock); a policy never reads the time itself, so simulation and production order
alike.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from driftsched.core.request import Ticket


@runtime_checkable
class Policy(Protocol):
    """Orders queued tickets: `add`, `pop`, `peek`, `remove`, `__len__` (+ a completion hook)."""

    name: ClassVar[str]

    def add(self, ticket: Ticket, now: float) -> None: ...

    def pop(self, now: float) -> Ticket | None: ...

    def peek(self, now: float) -> Ticket | None: ...

    def remove(self, ticket: Ticket) -> bool: ...

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None: ...

    def __len__(self) -> int: ...


@runtime_checkable
class RankedPolicy(Policy, Protocol):
    """A policy that can rank any ticket, queued or running: lower runs first.

    Preemption needs it (a running ticket may be preempted only for a better-ranked waiting one). The
    rank of a ticket must not change while it runs: static keys (arrival, tier, size) qualify.
    """

    def rank(self, ticket: Ticket, now: float) -> tuple[float, ...]: ...
