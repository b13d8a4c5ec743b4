"""The scheduler core: admission, per-tenant accounting, one policy, drift feedback.

Life of a request::

    submit/admit ──▶ queued ──dispatch──▶ in flight ──complete──▶ done (observation fed back)
          │            ├──cancel──▶ cancelled  │  └──abort──▶ done (no observation)
          ▼            └──deadline passes──▶ expired
       rejected (reason, retry hint)       ◀──requeue── (preempted: resumes from its generated tokens)

Every admitted request leaves the queue for good exactly once: by dispatch, cancel or expiry. A
preempted request goes back to the queue with the tokens it generated appended to its prompt and keeps
its place in the policy's order (arrival time, sequence number); the shell gives it a fresh queue
deadline. The caller owns capacity: it calls `dispatch`
whenever an engine slot frees up.

**SLO admission and holdback** (`AdmissionConfig`). The scheduler keeps the risk model
(`driftsched.core.risk`): the queued work indexed by tier and TTFT deadline, the pool's output
tokens/s measured while it is saturated (the dispatcher's `pool_reading` says when, and what the
replicas generated), and each tenant's demand. `admit` asks `SloAdmission` after the quotas
(module `driftsched.core.admission`). `dispatch` applies the holdback rule: when the policy's head
is of a less important tier than a tier at risk (its most urgent request projected past
`risk_share` of its TTFT objective) and the head's tenant asks for more than its fair share, that
tier's most urgent request (earliest TTFT deadline) goes first instead, unless the less
important tiers hold less than `reserve` of the requests in flight. Tiers are visited most important
first; the policy's order stands otherwise (always for a head whose tenant is within its share: a
tier's priority does not take another tenant's share), and within a tier at risk the order is
earliest deadline first. The rule needs the measured rate (the shares are of it); before, none
applies. A `Dispatcher` tells the scheduler the replica count (`set_replicas`), so the rate is per
replica and follows the pool's size. A policy class may declare its own admission settings
(`admission_for`): a peer that models a scheduler without this admission turns it off for itself.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from driftsched.core.admission import SloAdmission, TenantQuota, admission_for
from driftsched.core.clock import Clock
from driftsched.core.config import CoreConfig
from driftsched.core.errors import UnknownRequestError
from driftsched.core.estimator import Estimate, Estimator
from driftsched.core.intake import Intake
from driftsched.core.policy import Policy
from driftsched.core.request import Admission, RejectReason, Request, Ticket
from driftsched.core.risk import RiskModel, TierRisk
from driftsched.core.stats import SchedulerStats, TenantCounters, TenantState

logger = logging.getLogger(__name__)


class Scheduler:
    """Per-tenant admission and queues in front of one policy (see module docstring)."""

    def __init__(
        self,
        config: CoreConfig,
        policy: Policy,
        clock: Clock,
        estimator: Estimator | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.clock = clock
        self.intake = Intake(config, estimator)
        self.estimator = self.intake.estimator
        now = clock()
        self._quotas = {name: TenantQuota(t, now) for name, t in self.intake.tenants.items()}
        self._max_queued = {name: t.max_queued for name, t in self.intake.tenants.items()}
        self._counters = {name: TenantCounters() for name in self.intake.tenants}
        self._queued_per_tenant = dict.fromkeys(self.intake.tenants, 0)
        self._queued: dict[str, Ticket] = {}
        self._in_flight: dict[str, Ticket] = {}
        self._deadlines: list[tuple[float, int, Ticket]] = []
        self._expired: list[Ticket] = []  # expired by peek/dispatch, not yet returned by expire_due
        self._front: deque[Ticket] = deque()  # resumed requests, served before the policy's order
        self._seq = 0
        admission = admission_for(policy, config.scheduler.admission)
        self.risk = RiskModel(admission, {name: t.weight for name, t in self.intake.tenants.items()})
        self._slo = SloAdmission(admission, self.risk)
        self._holdback = admission.enabled and admission.holdback
        self._reserve = admission.reserve
        self._pool_full: bool | None = None  # the dispatcher's last word: no room for the head
        self._in_flight_tiers: dict[int, int] = {}
        self.prefix_lookup: Callable[[Ticket], int] | None = None
        """Prompt tokens of a ticket cached on the replica that holds most of its prefix (set by the
        `Dispatcher` from its `Placement`); read once, at admission, into `Ticket.cached_tokens`."""

    # -- admission -------------------------------------------------------------------------------

    def submit(self, request: Request) -> Admission:
        """Validate, classify, estimate and admit a request."""
        rejection = self.intake.validate(request)
        if rejection is not None:
            self._count_rejection(request.tenant, rejection.reason)
            return rejection
        return self.admit(self.intake.ticket(request, self.clock()))

    def admit(self, ticket: Ticket) -> Admission:
        """Admit a ticket made by an `Intake` (possibly in another process) or reject it."""
        now = self.clock()
        tenant = ticket.tenant
        quota = self._quotas.get(tenant)
        if quota is None:
            return self._reject(tenant, RejectReason.UNKNOWN_TENANT, f"unknown tenant {tenant!r}")
        if ticket.request_id in self._queued or ticket.request_id in self._in_flight:
            return self._reject(tenant, RejectReason.INVALID, "duplicate request id")
        if len(self._queued) >= self.config.scheduler.max_queued_total:
            return self._reject(
                tenant,
                RejectReason.OVERLOADED,
                "the system queue is full",
                self.config.scheduler.overload_retry_after_s,
            )
        if self._queued_per_tenant[tenant] >= self._max_queued[tenant]:
            return self._reject(
                tenant,
                RejectReason.TENANT_QUEUE_FULL,
                f"tenant {tenant!r} already has {self._max_queued[tenant]} requests waiting",
                self.config.scheduler.overload_retry_after_s,
            )
        wait = quota.request_wait_s(now)
        if wait > 0:
            return self._reject(
                tenant, RejectReason.REQUEST_QUOTA, "requests-per-minute quota exceeded", wait
            )
        wait = quota.token_wait_s(ticket.cost_tokens, now)
        if wait > 0:
            return self._reject(tenant, RejectReason.TOKEN_QUOTA, "tokens-per-minute quota exceeded", wait)
        self._advance(now)
        refusal = self._slo.check(ticket, now)
        if refusal is not None:
            self.risk.shed.add(now, ticket.remaining_estimate)
            return self._reject(tenant, refusal.reason, refusal.detail, refusal.retry_after_s)
        quota.charge(ticket.cost_tokens)
        if ticket.prefix_blocks and self.prefix_lookup is not None:
            ticket.cached_tokens = min(ticket.prompt_tokens - 1, self.prefix_lookup(ticket))
        self._slo.admitted(ticket, now)
        self._seq += 1
        ticket.seq = self._seq
        ticket.queued_at = now
        self._queued[ticket.request_id] = ticket
        self._queued_per_tenant[tenant] += 1
        self._counters[tenant].admitted += 1
        if ticket.deadline is not None:
            heapq.heappush(self._deadlines, (ticket.deadline, ticket.seq, ticket))
        self.policy.add(ticket, now)
        self.risk.queued.add(ticket)
        self._advance(now)
        return Admission(ticket)

    def _reject(
        self, tenant: str, reason: RejectReason, detail: str, retry_after_s: float | None = None
    ) -> Admission:
        self._count_rejection(tenant, reason)
        return Admission(None, reason, detail, retry_after_s)

    def _count_rejection(self, tenant: str, reason: RejectReason | None) -> None:
        counters = self._counters.get(tenant)
        if counters is not None and reason is not None:
            counters.rejected[reason.value] = counters.rejected.get(reason.value, 0) + 1

    # -- leaving the queue -----------------------------------------------------------------------

    def _unqueue(self, ticket: Ticket) -> None:
        del self._queued[ticket.request_id]
        self._queued_per_tenant[ticket.tenant] -= 1
        self.risk.queued.remove(ticket)

    def _advance(self, now: float) -> None:
        """Tell the rate measurement whether the pool is saturated from `now` on: work waits, and the
        dispatcher's last step found no room for it (only then is the throughput capacity; a caller
        without a dispatcher counts any waiting work)."""
        self.risk.rate.advance(now, bool(self._queued) and self._pool_full is not False)

    def pool_reading(self, full: bool, running_tokens: float) -> None:
        """The dispatcher's reading after a step: whether the queue's head found no replica with room
        (`full`), and the output tokens the running requests have generated in their current runs
        (the rate counts tokens as they are generated, `driftsched.core.risk`)."""
        now = self.clock()
        self._pool_full = full
        self._advance(now)
        self.risk.rate.generated(now, running_tokens)

    def _fly(self, ticket: Ticket, delta: int) -> None:
        self._in_flight_tiers[ticket.tier] = self._in_flight_tiers.get(ticket.tier, 0) + delta

    def peek(self) -> Ticket | None:
        """The ticket `dispatch` would return now, left in the queue (for capacity checks)."""
        now = self.clock()
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)
        ticket = self._front_head()
        if ticket is not None:
            return ticket
        head = self.policy.peek(now)
        return (self._held_for(head, now) or head) if head is not None else None

    def _held_for(self, head: Ticket, now: float) -> Ticket | None:
        """The holdback rule (module docstring): the ticket to dispatch before the policy's `head`."""
        if not self._holdback or not self.risk.over_share(head.tenant, now):
            return None
        for tier in self.risk.queued.tiers():
            if tier >= head.tier:
                return None
            urgent = self.risk.at_risk(tier, now)
            if urgent is None:
                continue
            flying = len(self._in_flight)
            lower = sum(n for k, n in self._in_flight_tiers.items() if k > tier)
            return None if flying and lower < self._reserve * flying else urgent
        return None

    def _front_head(self) -> Ticket | None:
        """The oldest resumed request still waiting (entries withdrawn since are dropped here)."""
        front = self._front
        while front and self._queued.get(front[0].request_id) is not front[0]:
            front.popleft()
        return front[0] if front else None

    def dispatch(self) -> Ticket | None:
        """The policy's next ticket, now in flight; None if nothing (unexpired) is waiting."""
        now = self.clock()
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)
        ticket = self._front_head()
        if ticket is not None:
            self._front.popleft()
            self.policy.remove(ticket)
        else:
            head = self.policy.peek(now)
            held = self._held_for(head, now) if head is not None else None
            ticket = held if held is not None and self.policy.remove(held) else self.policy.pop(now)
        if ticket is None:
            return None
        self._unqueue(ticket)
        ticket.dispatch_time = now
        self._in_flight[ticket.request_id] = ticket
        self._fly(ticket, 1)
        self._counters[ticket.tenant].dispatched += 1
        self._advance(now)
        return ticket

    def requeue(self, request_id: str, generated: int, deadline: float | None = None) -> Ticket:
        """Put a preempted in-flight request back in the queue, after `generated` tokens in this run.

        Raises `UnknownRequestError` if the request is not in flight. See `resume`.
        """
        ticket = self._in_flight.get(request_id)
        if ticket is None:
            raise UnknownRequestError(f"no request {request_id!r} in flight")
        return self.resume(ticket, ticket.generated + generated, deadline)

    def resume(self, ticket: Ticket, total_generated: int, deadline: float | None = None) -> Ticket:
        """Queue a stopped request again, to continue after `total_generated` output tokens in all.

        The in-flight ticket of that id, if any, is the one queued (a preemption); otherwise `ticket`
        is (its run was granted by an earlier scheduler instance, or failed over from a dead replica).
        Its prompt grows by the new tokens (the resumed run prefills them), its `max_tokens` shrinks by
        them, and it keeps its quota charge (settled once, at completion). It goes to the front: resumed
        requests take the next slot that fits them, oldest first, before any request that has not
        started (as vLLM does with the sequences it preempts), so a client whose stream already began is
        not sent to the back of a backlog it may not outlive; it still waits at most until `deadline`.
        """
        rid = ticket.request_id
        current = self._in_flight.pop(rid, None)
        if current is not None:
            ticket = current
            self._fly(ticket, -1)
        elif rid in self._queued or ticket.tenant not in self._quotas:
            raise UnknownRequestError(f"request {rid!r} is queued already or its tenant is unknown")
        new = total_generated - ticket.generated
        if not 0 <= new < ticket.max_tokens:
            if current is not None:
                self._in_flight[rid] = current
                self._fly(current, 1)
            raise ValueError(
                f"request {rid!r}: {total_generated} tokens generated in all leaves none of its "
                f"{ticket.max_tokens + ticket.generated} max_tokens to resume with"
            )
        now = self.clock()
        if current is None:
            self._seq += 1
            ticket.seq = self._seq  # a new instance: its own admission order
        ticket.prompt_tokens += new
        ticket.max_tokens -= new
        ticket.generated = total_generated
        ticket.preemptions += 1
        ticket.deadline = deadline
        ticket.queued_at = now
        self._queued[rid] = ticket
        self._queued_per_tenant[ticket.tenant] += 1
        self._counters[ticket.tenant].preempted += 1
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, ticket.seq, ticket))
        self.policy.add(ticket, now)
        self._front.append(ticket)
        self.risk.queued.add(ticket, resumed=True)
        self._advance(now)
        return ticket

    def unstart(self, request_id: str) -> Ticket:
        """Undo the dispatch of an in-flight request that never started (its grant was revoked for a
        better-ranked one): it is queued again exactly as it was, at its place in the policy's order,
        with its queue deadline, its quota charge and no preemption counted. Raises
        `UnknownRequestError` if it is not in flight."""
        ticket = self._in_flight.pop(request_id, None)
        if ticket is None:
            raise UnknownRequestError(f"no request {request_id!r} in flight")
        now = self.clock()
        self._fly(ticket, -1)
        ticket.dispatch_time = None
        self._queued[request_id] = ticket
        self._queued_per_tenant[ticket.tenant] += 1
        self._counters[ticket.tenant].revoked += 1
        if ticket.deadline is not None:  # its entry may have left the heap while it was in flight
            heapq.heappush(self._deadlines, (ticket.deadline, ticket.seq, ticket))
        self.policy.add(ticket, ticket.queued_at)
        if ticket.preemptions:  # a resumed request goes back to the front, as it came
            self._front.append(ticket)
            self._front = deque(sorted(self._front, key=lambda t: t.queued_at))
        self.risk.queued.add(ticket, resumed=bool(ticket.preemptions))
        self._advance(now)
        return ticket

    def restart(self, request_id: str) -> Ticket:
        """Undo an `unstart` whose order to stop lost the race: the request had started where it was
        granted (and may have finished there). Its copy leaves the queue and it is in flight again, its
        revocation uncounted. Raises `UnknownRequestError` if it is not queued."""
        ticket = self._queued.get(request_id)
        if ticket is None or not self.policy.remove(ticket):
            raise UnknownRequestError(f"no request {request_id!r} queued")
        if ticket in self._front:
            self._front.remove(ticket)
        now = self.clock()
        self._unqueue(ticket)
        ticket.dispatch_time = now
        self._in_flight[request_id] = ticket
        self._fly(ticket, 1)
        self._counters[ticket.tenant].revoked -= 1
        self._advance(now)
        return ticket

    def catch_up(self, request_id: str, total_generated: int) -> bool:
        """A queued request (revoked) turns out to have generated `total_generated` tokens in all before
        it stopped (it had started after all): its prompt and budget follow, as `resume` would set them.
        False if it is not queued or nothing changed."""
        ticket = self._queued.get(request_id)
        if ticket is None:
            return False
        new = total_generated - ticket.generated
        if not 0 < new < ticket.max_tokens:
            return False
        ticket.prompt_tokens += new
        ticket.max_tokens -= new
        ticket.generated = total_generated
        return True

    def cancel(self, request_id: str) -> Ticket | None:
        """Withdraw a queued request; None if it is not queued (already dispatched or unknown)."""
        ticket = self._queued.get(request_id)
        if ticket is None or not self.policy.remove(ticket):
            return None
        self._unqueue(ticket)
        self._quotas[ticket.tenant].reconcile(ticket.corrected_estimate, 0.0)
        self._counters[ticket.tenant].cancelled += 1
        self._advance(self.clock())
        return ticket

    def expire_due(self) -> list[Ticket]:
        """Remove queued tickets whose deadline has passed; the caller answers them (e.g. 504). Also
        returns those that `peek` or `dispatch` expired since the last call, so every expired ticket is
        returned exactly once."""
        self._expire(self.clock())
        expired, self._expired = self._expired, []
        return expired

    def _expire(self, now: float) -> None:
        expired = self._expired
        while self._deadlines and self._deadlines[0][0] <= now:
            ticket = heapq.heappop(self._deadlines)[2]
            if self._queued.get(ticket.request_id) is ticket and self.policy.remove(ticket):
                self._unqueue(ticket)
                self._quotas[ticket.tenant].reconcile(ticket.corrected_estimate, 0.0)
                self._counters[ticket.tenant].expired += 1
                expired.append(ticket)
        self._advance(now)

    def complete(self, request_id: str, output_tokens: int, observe: bool = True) -> Ticket:
        """An in-flight request finished with `output_tokens` in all (earlier, preempted runs included);
        feeds drift statistics if `observe`."""
        ticket = self._in_flight.pop(request_id, None)
        if ticket is None:
            raise UnknownRequestError(f"no request {request_id!r} in flight")
        tenant, now = ticket.tenant, self.clock()
        self._fly(ticket, -1)
        self._counters[tenant].completed += 1
        self._quotas[tenant].reconcile(ticket.corrected_estimate, float(output_tokens))
        self.policy.on_finish(ticket, output_tokens)
        self.risk.rate.completed(now, float(output_tokens - ticket.generated))  # this run's tokens
        if observe:
            estimate = Estimate(ticket.raw_estimate, ticket.corrected_estimate, ticket.bucket)
            self.estimator.observe(tenant, ticket.category, estimate, output_tokens, now)
        return ticket

    def abort(self, request_id: str) -> Ticket | None:
        """An in-flight request ended without a usable observation (engine failure, disconnect)."""
        ticket = self._in_flight.pop(request_id, None)
        if ticket is not None:
            self._fly(ticket, -1)
            self._quotas[ticket.tenant].reconcile(ticket.corrected_estimate, 0.0)
        return ticket

    # -- the risk model ------------------------------------------------------------------------

    def set_replicas(self, replicas: int) -> None:
        """The pool has `replicas` replicas now (a `Dispatcher` reports it at every step)."""
        self.risk.rate.set_replicas(self.clock(), replicas)

    def at_risk(self, ticket: Ticket, now: float) -> bool:
        """Whether a queued ticket is projected past `risk_share` of its TTFT objective (what it has
        waited plus its predicted wait; the holdback rule's test, for one ticket)."""
        return self.risk.projected_share(ticket, now) > self.risk.config.risk_share

    def tier_risks(self) -> tuple[TierRisk, ...]:
        """Every tier with queued work: its TTFT objective, the work ahead of a new request, its
        predicted wait and whether it is at risk (what the holdback and the autoscaler read)."""
        return self.risk.tier_risks(self.clock())

    # -- introspection ---------------------------------------------------------------------------

    @property
    def num_queued(self) -> int:
        return len(self._queued)

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def in_flight_ticket(self, request_id: str) -> Ticket | None:
        """The ticket of an in-flight request, if it is one."""
        return self._in_flight.get(request_id)

    def queued_tickets(self) -> list[Ticket]:
        """The tickets waiting now, in admission order."""
        return list(self._queued.values())

    def is_queued(self, request_id: str) -> bool:
        return request_id in self._queued

    def tenant_state(self, tenant: str) -> TenantState | None:
        """`tenant`'s counters, queue, running requests and quota left right now; None if unknown."""
        counters = self._counters.get(tenant)
        if counters is None:
            return None
        requests_left, tokens_left = self._quotas[tenant].left(self.clock())
        return TenantState(
            counters=replace(counters, rejected=dict(counters.rejected)),
            queued=self._queued_per_tenant[tenant],
            in_flight=sum(1 for t in self._in_flight.values() if t.tenant == tenant),
            requests_left=requests_left,
            tokens_left=tokens_left,
        )

    def snapshot(self) -> SchedulerStats:
        """Queue depths, counters and drift statistics right now."""
        now = self.clock()
        in_flight = dict.fromkeys(self._counters, 0)
        for ticket in self._in_flight.values():
            in_flight[ticket.tenant] += 1
        tracker = self.estimator.tracker
        return SchedulerStats(
            time=now,
            policy=self.policy.name,
            queued=dict(self._queued_per_tenant),
            in_flight=in_flight,
            counters={
                k: replace(c, rejected=dict(c.rejected))
                for k, c in self._counters.items()
            },
            drift=tracker.stats(now),
            drift_total=tracker.totals(),
            service_tokens_per_s=self.risk.rate.pool(),
            tiers=list(self.risk.tier_risks(now)),
        )
