"""Dispatch: which queued ticket goes next, and to which replica. One object, called by both shells.

The scheduler actor calls `Dispatcher.step` whenever capacity may have freed or work arrived (a grant
is then handed to the parked caller); the simulator calls it after every arrival and engine step (a
grant is then added to that simulated engine). Either way the decision is the same: the policy's head
(`Scheduler.peek`) is placed by the fit rule of `driftsched.core.placement`, and dispatch stops at the
first head that fits no replica, so the policy's order is never bypassed by a smaller ticket behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driftsched.core.placement import Placement
from driftsched.core.request import Ticket
from driftsched.core.scheduler import Scheduler


@dataclass(slots=True)
class DispatchStep:
    """What one `Dispatcher.step` decided: grants in order, and tickets whose queue deadline passed."""

    grants: list[tuple[Ticket, str]] = field(default_factory=list)
    expired: list[Ticket] = field(default_factory=list)


class Dispatcher:
    """The policy's order (`Scheduler`) placed on replicas (`Placement`)."""

    def __init__(self, scheduler: Scheduler, placement: Placement) -> None:
        self.scheduler = scheduler
        self.placement = placement

    def step(self) -> DispatchStep:
        """Expire overdue tickets, then grant heads while the head fits some replica."""
        scheduler, placement = self.scheduler, self.placement
        out = DispatchStep(expired=scheduler.expire_due())
        while scheduler.num_queued:
            head = scheduler.peek()
            if head is None:
                break
            replica = placement.choose(head)
            if replica is None:
                break
            ticket = scheduler.dispatch()
            if ticket is None:  # pragma: no cover - peek and dispatch agree at one instant
                break
            placement.grant(replica, ticket, scheduler.clock())
            out.grants.append((ticket, replica))
        return out
