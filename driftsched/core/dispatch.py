"""Dispatch: which queued ticket goes next, to which replica, and what gives way. One object, two shells.

The scheduler actor calls `Dispatcher.step` whenever capacity may have freed or work arrived (a grant
is then handed to the parked caller, a preemption to the victim's replica); the simulator calls it
after every arrival and engine step (a grant is then added to that simulated engine, a preemption
aborts the victim there). Either way the decision is the same: the scheduler's head (`Scheduler.peek`:
the policy's, or the most urgent request of a tier at risk under the holdback rule stated in
`driftsched.core.scheduler`) is placed by the fit rule of `driftsched.core.placement`, and dispatch
stops at the first head that fits no replica, so that order is never bypassed by a smaller ticket
behind it. Each step also tells the scheduler how many replicas report, for its rate measurement.

**Preemption** (when `PreemptionConfig.enabled` and the policy can rank running tickets,
`RankedPolicy`). When the head fits nowhere and has waited `wait_s`, and a replica has not freed any
capacity for `wait_s` either (its slots are held by long runners: nothing frees soon), the worst-ranked
running request there
that ranks below the head, has run `min_run_s`, was preempted fewer than `max_per_request` times, has
more than `near_end_tokens` of its estimate left, and whose slot and KV would let the head fit, is
preempted: its slot is freed in the placement at once and the shell stops it and puts it back in the
queue (`Scheduler.requeue`) with its generated tokens, to resume later. At most one preemption per
step, and the caps above bound how often any request can be interrupted, so nothing thrashes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from driftsched.core.config import PreemptionConfig
from driftsched.core.placement import Placement
from driftsched.core.policy import RankedPolicy
from driftsched.core.request import Ticket
from driftsched.core.scheduler import Scheduler

Rank = tuple[float, ...]


@dataclass(slots=True)
class DispatchStep:
    """What one `Dispatcher.step` decided, in order: preemptions first, then grants; and expiries."""

    grants: list[tuple[Ticket, str]] = field(default_factory=list)
    expired: list[Ticket] = field(default_factory=list)
    preempted: list[tuple[Ticket, str]] = field(default_factory=list)


class Dispatcher:
    """The policy's order (`Scheduler`) placed on replicas (`Placement`), with optional preemption.

    `progress(request_id)` tells how many tokens a running request has generated in its current run
    (the simulator reads its engines; the live service the replicas' last reports); the default reads
    the placement's reports.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        placement: Placement,
        preemption: PreemptionConfig | None = None,
        progress: Callable[[str], int] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.placement = placement
        self.preemption = preemption if preemption is not None else PreemptionConfig()
        self.progress = progress if progress is not None else placement.progress
        scheduler.prefix_lookup = placement.cached_tokens  # admission records the best cached prefix
        policy = scheduler.policy
        self._ranked = policy if isinstance(policy, RankedPolicy) and self.preemption.enabled else None
        self._running: list[tuple[Rank, int, str, str]] = []  # (negated rank, seq, id, replica)

    def step(self) -> DispatchStep:
        """Expire overdue tickets, then grant heads while the head fits (preempting if allowed)."""
        scheduler, placement = self.scheduler, self.placement
        now = scheduler.clock()
        scheduler.set_replicas(sum(1 for _ in placement.replicas()))  # the rate is per replica
        out = DispatchStep(expired=scheduler.expire_due())
        while scheduler.num_queued:
            head = scheduler.peek()
            if head is None:
                break
            replica = placement.choose(head, now)
            if replica is None and not out.preempted:
                victim = self._victim(head, now)
                if victim is not None:
                    out.preempted.append(victim)
                    replica = placement.choose(head, now)
            if replica is None:
                break
            ticket = scheduler.dispatch()
            if ticket is None:  # pragma: no cover - peek and dispatch agree at one instant
                break
            placement.grant(replica, ticket, now)
            out.grants.append((ticket, replica))
            if self._ranked is not None:
                rank = self._ranked.rank(ticket, now)
                entry = (tuple(-x for x in rank), ticket.seq, ticket.request_id, replica)
                heapq.heappush(self._running, entry)
        out.expired += scheduler.expire_due()  # any that peek/dispatch expired during this step
        return out

    def _victim(self, head: Ticket, now: float) -> tuple[Ticket, str] | None:
        """The running request to preempt for `head` (module docstring), its slot already freed."""
        cfg, policy = self.preemption, self._ranked
        if policy is None or head.preemptions or now - head.queued_at < cfg.wait_s:
            return None  # a resumed head (at the front) waits for a slot to free: no preemption chains
        head_rank = policy.rank(head, now)
        heap, found = self._running, None
        examined: list[tuple[Rank, int, str, str]] = []
        while heap and len(examined) < cfg.max_candidates:
            entry = heapq.heappop(heap)
            neg, _, rid, replica = entry
            ticket = self.scheduler.in_flight_ticket(rid)
            if ticket is None or not self.placement.holds(replica, rid):
                continue  # finished, aborted or moved since: forget the entry
            examined.append(entry)
            if tuple(-x for x in neg) <= head_rank:
                break  # every other running request ranks above the head too
            done = self.progress(rid)
            if (
                now - self.placement.stuck_since(replica) < cfg.wait_s
                or ticket.preemptions >= cfg.max_per_request
                or (ticket.dispatch_time is not None and now - ticket.dispatch_time < cfg.min_run_s)
                or ticket.corrected_estimate - ticket.generated - done <= cfg.near_end_tokens
                or not self.placement.fits_after_release(replica, head, rid, ticket.prompt_tokens + done)
            ):
                continue
            examined.pop()
            self.placement.release(replica, rid, ticket.prompt_tokens + done, now)
            found = (ticket, replica)
            break
        for entry in examined:
            heapq.heappush(heap, entry)
        if len(heap) > 2 * self.scheduler.num_in_flight + 64:
            heap[:] = [e for e in heap if self.placement.holds(e[3], e[2])]
            heapq.heapify(heap)
        return found
