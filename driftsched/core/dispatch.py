"""Dispatch: which queued ticket goes next, to which replica, and what gives way. One object, two shells.

The scheduler actor calls `Dispatcher.step` whenever capacity may have freed or work arrived (a grant
is then handed to the parked caller, a preemption to the victim's replica); the simulator calls it
after every arrival and engine step (a grant is then added to that simulated engine, a preemption
aborts the victim there). Either way the decision is the same: the scheduler's head (`Scheduler.peek`:
the policy's, or the most urgent request of a tier at risk under the holdback rule stated in
`driftsched.core.scheduler`) is placed by the fit rule of `driftsched.core.placement`, and dispatch
stops at the first head that fits no replica, so that order is never bypassed by a smaller ticket
behind it. Each step also tells the scheduler how many replicas report, for its rate measurement.

**Revocation (grant-ahead).** A replica takes `Capacity.running_slots` running requests plus a few
granted ahead, held in its engine's queue so that a freed slot is refilled at the engine's next step
instead of after a round trip through the scheduler. A grant ahead has not started, so giving it back
costs nothing: when the head fits nowhere and a replica holds a not-started grant that ranks below it
(`RankedPolicy`) and whose slot and KV would let the head fit, that grant is revoked (the shell tells
its replica to drop it) and goes back to its place in the queue (`Scheduler.unstart`), and the head
takes its place. The policy's order is therefore kept as if nothing had been granted ahead; a policy
without a rank (`weighted`) revokes nothing. Revocation needs no waiting and no preemption setting.
A grant ahead also moves, revoked on its replica and granted on another in the same step, when that
other replica would start it at once (a running slot free there: a replica just added, or one that
emptied), so no request waits behind running ones while a slot elsewhere is idle. A resumed request
is never revoked: it goes before every request that has not started anyway.

**Preemption** (when `PreemptionConfig.enabled` and the policy can rank running tickets). When the head
fits nowhere, nothing is revocable, and either the head's TTFT objective is at risk
(`Scheduler.at_risk`: waited plus predicted wait past `risk_share` of it) or the head has waited
`wait_s` and a replica has not freed any capacity for `wait_s` either (its slots are held by long
runners: nothing frees soon), the worst-ranked running request there that ranks below the head, has run
`min_run_s`, was preempted fewer than `max_per_request` times, has more than `near_end_tokens` of its
estimate left, and whose slot and KV would let the head fit, is preempted: its slot is freed in the
placement at once and the shell stops it and puts it back in the queue (`Scheduler.requeue`) with its
generated tokens, to resume later. An at-risk head does not wait: its objective is what the wait would
spend. At most one preemption per step, and the caps above bound how often any request can be
interrupted, so nothing thrashes.
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

MAX_REVOCATIONS = 64
"""Most grants revoked in one dispatch step (each one is for a better-ranked head, so a step that
needs more is rare; the bound keeps any step finite)."""


@dataclass(slots=True)
class DispatchStep:
    """What one `Dispatcher.step` decided: grants, expiries, preemptions and revocations. A grant revoked
    in the step that made it is dropped from `grants` (it never left), not listed in `revoked`."""

    grants: list[tuple[Ticket, str]] = field(default_factory=list)
    expired: list[Ticket] = field(default_factory=list)
    preempted: list[tuple[Ticket, str]] = field(default_factory=list)
    revoked: list[tuple[Ticket, str]] = field(default_factory=list)
    """Grants taken back before they started (ticket back in the queue; the replica drops it)."""


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
        self._rank = policy if isinstance(policy, RankedPolicy) else None  # revocation needs a rank
        self._ranked = self._rank if self.preemption.enabled else None  # preemption too
        self._running: list[tuple[Rank, int, str, str]] = []  # (negated rank, seq, id, replica)
        self._ahead: dict[str, tuple[Ticket, str]] = {}  # grants ahead, maybe not started: id -> (t, r)

    def step(self) -> DispatchStep:
        """Expire overdue tickets, then grant heads while the head fits (preempting if allowed)."""
        scheduler, placement = self.scheduler, self.placement
        now = scheduler.clock()
        scheduler.set_replicas(sum(1 for _ in placement.replicas()))  # the rate is per replica
        out = DispatchStep(expired=scheduler.expire_due())
        revocations, full = 0, False
        while scheduler.num_queued:
            head = scheduler.peek()
            if head is None:
                break
            replica = placement.choose(head, now)
            if replica is None and revocations < MAX_REVOCATIONS and self._revoke(head, now, out):
                revocations += 1
                if scheduler.peek() is not head:  # the revoked ticket goes first after all (holdback)
                    continue
                replica = placement.choose(head, now)
            if replica is None and not out.preempted:
                victim = self._victim(head, now)
                if victim is not None:
                    out.preempted.append(victim)
                    replica = placement.choose(head, now)
            if replica is None:
                full = True
                break
            ticket = scheduler.dispatch()
            if ticket is None:  # pragma: no cover - peek and dispatch agree at one instant
                break
            placement.grant(replica, ticket, now)
            out.grants.append((ticket, replica))
            if self._rank is not None:
                rank = self._rank.rank(ticket, now)
                entry = (tuple(-x for x in rank), ticket.seq, ticket.request_id, replica)
                heapq.heappush(self._running, entry)
            if placement.revocable(replica, ticket.request_id):
                self._ahead[ticket.request_id] = (ticket, replica)
        if self._ahead:
            self._move_ahead(now, out)
        if self._ahead and not out.preempted:
            victim = self._promote(now)
            if victim is not None:
                out.preempted.append(victim)
        out.expired += scheduler.expire_due()  # any that peek/dispatch expired during this step
        scheduler.pool_reading(full, placement.generated())
        return out

    def _revoke(self, head: Ticket, now: float, out: DispatchStep) -> bool:
        """Take back the worst-ranked not-started grant below `head` whose place lets `head` fit
        (module docstring); True if one was."""
        policy = self._rank
        if policy is None:
            return False
        head_rank = policy.rank(head, now)
        placement = self.placement

        def revocable(ticket: Ticket, replica: str, _done: int) -> bool:
            # A resumed request goes before every request that has not started (`Scheduler.resume`),
            # whatever its rank: taking its place back would hand it straight back to it.
            rid = ticket.request_id
            return not ticket.preemptions and placement.revocable(replica, rid) and (
                placement.fits_after_release(replica, head, rid, ticket.prompt_tokens))

        found = self._worst_below(head_rank, self.preemption.max_candidates, revocable)
        if found is None:
            return False
        ticket, replica = found
        rid = ticket.request_id
        placement.release(replica, rid)  # not a turnover: nothing ran there
        self.scheduler.unstart(rid)
        granted_now = [i for i, (t, _) in enumerate(out.grants) if t.request_id == rid]
        if granted_now:  # granted earlier in this very step: it never left
            del out.grants[granted_now[-1]]
        else:
            out.revoked.append(found)
        return True

    def _worst_below(
        self, head_rank: Rank, limit: int, eligible: Callable[[Ticket, str, int], bool],
        on: str | None = None,
    ) -> tuple[Ticket, str] | None:
        """The worst-ranked running request that ranks below `head_rank` and is `eligible` (given its
        ticket, replica and tokens generated in this run), among the `limit` worst (on replica `on`
        only, if given); it leaves the heap."""
        heap, found = self._running, None
        examined: list[tuple[Rank, int, str, str]] = []
        skipped: list[tuple[Rank, int, str, str]] = []
        while heap and len(examined) < limit:
            entry = heapq.heappop(heap)
            neg, _, rid, replica = entry
            ticket = self.scheduler.in_flight_ticket(rid)
            if ticket is None or not self.placement.holds(replica, rid):
                continue  # finished, aborted or moved since: forget the entry
            if tuple(-x for x in neg) <= head_rank:
                examined.append(entry)
                break  # every other running request ranks above the head too
            if on is not None and replica != on:
                skipped.append(entry)
                continue
            examined.append(entry)
            if eligible(ticket, replica, self.progress(rid)):
                examined.pop()
                found = (ticket, replica)
                break
        for entry in (*examined, *skipped):
            heapq.heappush(heap, entry)
        if len(heap) > 2 * self.scheduler.num_in_flight + 64:
            heap[:] = [e for e in heap if self.placement.holds(e[3], e[2])]
            heapq.heapify(heap)
        return found

    def waiting_ahead(self) -> list[Ticket]:
        """The grants ahead that have not started: work that waits as queued work does (inside an
        engine instead of the queue), which the autoscaler counts as backlog."""
        return [ticket for _, ticket, _ in self._live_ahead()]

    def _live_ahead(self) -> list[tuple[str, Ticket, str]]:
        """The grants ahead not started yet, best-ranked first (the others are forgotten)."""
        placement, live = self.placement, []
        for rid, (ticket, replica) in list(self._ahead.items()):
            if self.scheduler.in_flight_ticket(rid) is not ticket or not placement.revocable(replica, rid):
                del self._ahead[rid]  # started, finished or gone
                continue
            live.append((rid, ticket, replica))
        if self._rank is not None:
            rank, now = self._rank.rank, self.scheduler.clock()
            live.sort(key=lambda entry: rank(entry[1], now))
        return live

    def _move_ahead(self, now: float, out: DispatchStep) -> None:
        """A grant ahead waits for a running slot on its replica; where another replica would start it
        at once (a new or idle one), it moves there: revoked at no cost on its replica, granted on the
        other in the same step."""
        placement = self.placement
        idle = [r.replica_id for r in placement.replicas() if placement.running_slot_free(r.replica_id)]
        if not idle:  # the common case: nowhere would a grant start sooner
            return
        for rid, ticket, source in self._live_ahead():
            target = next((r for r in idle if r != source and placement.starts_at_once(r, ticket)), None)
            if target is None:
                continue
            placement.release(source, rid)
            placement.grant(target, ticket, now)
            del self._ahead[rid]
            granted_now = [i for i, (t, _) in enumerate(out.grants) if t.request_id == rid]
            if granted_now:  # granted in this very step: it never left, it just goes elsewhere
                out.grants[granted_now[-1]] = (ticket, target)
            else:
                out.revoked.append((ticket, source))
                out.grants.append((ticket, target))
            if self._rank is not None:
                entry = (tuple(-x for x in self._rank.rank(ticket, now)), ticket.seq, rid, target)
                heapq.heappush(self._running, entry)

    def _guards(self, now: float, urgent: bool) -> Callable[[Ticket, str, int], bool]:
        """Whether a running request may be preempted now (module docstring), for a head that is
        `urgent` (at risk: no waiting) or not."""
        cfg, placement = self.preemption, self.placement

        def preemptible(ticket: Ticket, replica: str, done: int) -> bool:
            return not (
                (not urgent and now - placement.stuck_since(replica) < cfg.wait_s)
                or ticket.preemptions >= cfg.max_per_request
                or (ticket.dispatch_time is not None and now - ticket.dispatch_time < cfg.min_run_s)
                or ticket.corrected_estimate - ticket.generated - done <= cfg.near_end_tokens
            )

        return preemptible

    def _victim(self, head: Ticket, now: float) -> tuple[Ticket, str] | None:
        """The running request to preempt for `head` (module docstring), its slot already freed."""
        cfg, policy = self.preemption, self._ranked
        if policy is None or head.preemptions:
            return None  # a resumed head (at the front) waits for a slot to free: no preemption chains
        urgent = self.scheduler.at_risk(head, now)
        if not urgent and now - head.queued_at < cfg.wait_s:
            return None
        placement, guards = self.placement, self._guards(now, urgent)

        def preemptible(ticket: Ticket, replica: str, done: int) -> bool:
            return guards(ticket, replica, done) and placement.fits_after_release(
                replica, head, ticket.request_id, ticket.prompt_tokens + done)

        return self._preempt(self._worst_below(policy.rank(head, now), cfg.max_candidates, preemptible), now)

    def _promote(self, now: float) -> tuple[Ticket, str] | None:
        """A grant ahead waits inside its replica's engine behind the running requests, as the head
        would wait in the queue: when the best-ranked one is at risk or has waited `wait_s`, preempt
        the worst-ranked running request below it on that replica, whose slot it then takes."""
        cfg, policy = self.preemption, self._ranked
        if policy is None:
            return None
        best: tuple[Rank, Ticket, str, bool] | None = None
        share = self.scheduler.risk.config.risk_share
        for _, ticket, replica in self._live_ahead():
            if ticket.preemptions:
                continue  # a resumed one waits for a slot to free, as a resumed head does
            urgent = now - ticket.arrival_time > share * ticket.ttft_slo_s
            if not urgent and now - ticket.queued_at < cfg.wait_s:
                continue
            rank = policy.rank(ticket, now)
            if best is None or rank < best[0]:
                best = (rank, ticket, replica, urgent)
        if best is None:
            return None
        rank, _, replica, urgent = best
        found = self._worst_below(rank, cfg.max_candidates, self._guards(now, urgent), on=replica)
        return self._preempt(found, now)

    def _preempt(self, found: tuple[Ticket, str] | None, now: float) -> tuple[Ticket, str] | None:
        """Free the slot of the running request `found` chose, if any (the shell stops it)."""
        if found is not None:
            ticket, replica = found
            rid = ticket.request_id
            self.placement.release(replica, rid, ticket.prompt_tokens + self.progress(rid), now)
        return found
