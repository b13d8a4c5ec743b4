"""The central scheduler actor: the core `Scheduler` plus a capacity ledger, behind batched hot-path calls.

Hot path, batched per ingress (its `SchedulerClient`, deployments/scheduler_client.py, makes them):

1. ``submit(client_id, [Submission(ticket, queue_timeout_s), ...])`` admits each ticket (quotas, queue
   caps) and routes it to the client's outbox (deployments/outbox.py); it returns the answers known at
   once (rejections, grants this call's dispatch made, anything else the outbox held).
2. ``poll(client_id, wait_s)`` is the client's long poll: it returns its outbox as soon as an answer
   is there (a grant naming the replica, "expired" when a ticket's queue deadline passes first, or
   "cancelled"), or empty after `wait_s`.
3. ``release_many([Release(request_id, replica_id, output_tokens, timings), ...])`` frees the slots,
   settles the tenants' token quotas, records the ingress's timings for /metrics, and hands each
   finished request's observation (its ticket's estimates, the observed length) to the drift feed
   (deployments/drift_feed.py), which batches them to the drift statistics actor.

One call of each kind carries whatever the ingress gathered while the previous one was under way, so
the calls per request fall as the load rises. ``submit`` is idempotent per request id (a granted one
gets its grant again, a waiting one nothing new), so a client may always submit again; a client that
stops polling for `client_grace_s` has its outbox dropped and what it held freed.

Replicas call ``report`` each heartbeat (that is also how they register, and re-register after this
actor restarts); its answer names the requests the dispatcher preempted there, which the replica stops
(their streams end "preempted"). The ingress then calls ``resume(ticket, replica, generated)``: the
request goes back to the queue with its generated tokens appended to its prompt, and the call waits
for its new grant. ``cancel`` withdraws a request wherever it is (client disconnect). The actor holds
no scheduling logic: which ticket goes next and to which replica is the core's `Dispatcher` (the
policy's order placed by the `Placement` fit filter and configured rule on what the heartbeats report
and the prefix hashes the tickets carry), the same object the simulator drives. SLO admission is the
core's too: ``submit`` answers its refusals (429 ``slo_unreachable`` / ``tier_holdback``, 503
``system_slo_unreachable``, with Retry-After) like any other, each release's completion feeds the
core's service-rate measurement, every dispatch step tells it the replicas reporting, and ``backlog``
hands the autoscaler the core's predicted risk per tier.

Restart: the actor is a named Ray actor restarted by Ray (max_restarts=-1). A restarted instance starts
empty, with a new epoch: in-flight calls fail on the caller's side, and clients that see the failure or
the new epoch submit their outstanding requests again, within their deadlines; replicas re-register
within one heartbeat, and their running requests are counted from the reports. The new instance feeds
drift under a new sender name; the old one's acknowledged batches stay applied, its unacknowledged
batch is lost, and a request it granted is released here without a ticket, so teaches drift nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import TypedDict

from deployments.drift_feed import DRIFT_PUSH_S, DriftFeed, DriftSink
from deployments.engine import PrefixCacheCounters
from deployments.outbox import Outbox, Outboxes
from deployments.telemetry import Histogram, Outcome, PrefixTally, RequestBook, RequestTimings, SloTally
from deployments.usage import TenantUsage, tenant_usage
from driftsched.core.backlog import Backlog, BacklogMeter
from driftsched.core.clock import Clock, monotonic_clock
from driftsched.core.config import parse_core_config
from driftsched.core.dispatch import Dispatcher
from driftsched.core.errors import UnknownRequestError
from driftsched.core.placement import Capacity, Placement
from driftsched.core.policy import preemption_for
from driftsched.core.request import RejectReason, Ticket
from driftsched.core.scheduler import Scheduler
from driftsched.core.stats import SchedulerStats
from policies import make_policy

logger = logging.getLogger(__name__)

_MAINTENANCE_S = 0.2


class AcquireStatus(enum.StrEnum):
    """How a submitted (or resumed) request's wait for a slot ended."""

    GRANTED = "granted"  # a replica slot: `replica_id`
    REJECTED = "rejected"  # refused by admission: `reason`, `detail`, `retry_after_s`
    EXPIRED = "expired"  # the queue deadline passed first
    CANCELLED = "cancelled"  # withdrawn (the client went away)


@dataclass(slots=True, frozen=True)
class AcquireResult:
    """The answer to a submitted or resumed request (what its outbox or its ``resume`` call gets)."""

    status: AcquireStatus
    replica_id: str | None = None
    reason: RejectReason | None = None
    detail: str = ""
    retry_after_s: float | None = None
    queue_wait_s: float = 0.0


_EXPIRED = AcquireResult(AcquireStatus.EXPIRED, detail="queue deadline passed")
_CANCELLED = AcquireResult(AcquireStatus.CANCELLED)


@dataclass(slots=True, frozen=True)
class Submission:
    """One request of a ``submit``: its ticket and how long it may wait for a slot."""

    ticket: Ticket
    queue_timeout_s: float


@dataclass(slots=True, frozen=True)
class Answers:
    """What ``submit`` and ``poll`` return: the client's outbox epoch and the answers it held."""

    epoch: str
    """Changes when the actor restarted or dropped the outbox: the client then submits again."""
    results: dict[str, AcquireResult]
    """Request id -> its answer."""


@dataclass(slots=True, frozen=True)
class Release:
    """One request of a ``release_many``: the slot it held and how it ended."""

    request_id: str
    replica_id: str
    """The granted replica; "" for a request that never got one (it expired while queued)."""
    output_tokens: int | None
    """Output tokens over all its runs when it finished; None when it ended otherwise (no observation)."""
    timings: RequestTimings | None = None


class ShownDecision(TypedDict):
    """The autoscaling policy's previous decision, as it hands it to ``backlog`` for /metrics."""

    replicas: int
    desired: int
    reason: str


@dataclass(slots=True)
class SchedulerView:
    """Everything /metrics needs from the scheduler, in one call."""

    stats: SchedulerStats
    replicas: dict[str, dict[str, float]]
    histograms: dict[tuple[str, str], Histogram]
    tokens: dict[str, int]
    outcomes: dict[tuple[str, Outcome], int] = field(default_factory=dict)
    autoscale: ShownDecision | None = None
    """The autoscaling policy's last decision (`backlog`'s `decision`), None without autoscaling."""
    slo: dict[str, SloTally] = field(default_factory=dict)
    """Each tenant's requests judged against their latency objectives (the request book's tallies)."""
    prefix: dict[tuple[str, str], PrefixTally] = field(default_factory=dict)
    """(replica, tenant) -> completed requests' prompt tokens and those found in the prefix cache."""
    engine_prefix: dict[str, PrefixCacheCounters] = field(default_factory=dict)
    """Replica -> its engine's own prefix-cache counters, as last reported."""


class SchedulerActor:
    """Thin adapter: core scheduler + capacity ledger + client outboxes + drift feed (module docstring)."""

    def __init__(self, core_config: dict[str, object], replica_timeout_s: float = 5.0,
                 client_grace_s: float | None = None, drift: DriftSink | None = None,
                 drift_push_s: float = DRIFT_PUSH_S, clock: Clock = monotonic_clock, *,
                 shared_kv: bool = True, prefill_tokens_per_s: float | None = None) -> None:
        """`client_grace_s`: how long a batching client may go without polling before its outbox is
        dropped and what it held freed (default: the ledger's grace for an unused grant). `drift`:
        where finished requests' observations go, every `drift_push_s` (None: nowhere). `clock`: the
        scheduler's time (tests move it by hand; waits on the event loop stay in real seconds).
        `shared_kv` and `prefill_tokens_per_s` are what the placement cannot read from the config: whether
        the replicas' engine stores a prefix shared by running requests once (vLLM; the simulated
        engine charges each its whole prompt), and a replica's prefill rate until it is measured (None:
        the configured one). The placement rule itself is the configured one, as in the simulator."""
        config = parse_core_config(core_config)
        policy = make_policy(config.scheduler.policy, **config.scheduler.policy_options)
        self._clock = clock
        self._core = Scheduler(config, policy, self._clock)
        self._ledger = Placement.from_config(config.scheduler, replica_timeout_s=replica_timeout_s,
                                             prefill_tokens_per_s=prefill_tokens_per_s, shared_kv=shared_kv)
        # A policy that declares its own preemption (`vllm-priority`: at once) runs with it here too.
        preemption = preemption_for(self._core.policy, config.scheduler.preemption)
        self._dispatcher = Dispatcher(self._core, self._ledger, preemption)
        self._preempt: dict[str, set[str]] = {}  # replica id -> requests it must stop
        self._book = RequestBook()
        self._engine_prefix: dict[str, PrefixCacheCounters] = {}  # replica -> its last reported counters
        self._waiters: dict[str, asyncio.Future[AcquireResult]] = {}
        self._granted: dict[str, str] = {}
        self._epoch = uuid.uuid4().hex  # a restarted instance has a new one: clients submit again
        self._outboxes: Outboxes[AcquireResult] = Outboxes(self._epoch)
        self._client_grace_s = self._ledger.grant_grace_s if client_grace_s is None else client_grace_s
        self._maintenance: asyncio.Task[None] | None = None
        self._meter = BacklogMeter({t.name: t.latency_slo_s for t in config.tenants})
        self._autoscale: ShownDecision | None = None
        self._serving: set[str] | None = None  # replicas Serve routes to; None: all (no autoscaling)
        self._drift = drift
        self._feed = DriftFeed(config.estimator.drift, f"scheduler:{self._epoch}", push_s=drift_push_s)
        self._feeding: asyncio.Task[None] | None = None
        logger.info("scheduler actor started with policy %s", policy.name)

    # -- batched hot path (deployments/scheduler_client.py) ------------------------------------

    async def submit(self, client_id: str, items: list[Submission]) -> Answers:
        """Admit each ticket and route it to `client_id`'s outbox; returns the outbox's epoch and every
        answer it holds after one dispatch (see module docstring). Idempotent per request id."""
        self._ensure_maintenance()
        now = self._clock()
        box = self._outboxes.box(client_id, now)
        for item in items:
            ticket, queue_timeout_s = item.ticket, item.queue_timeout_s
            rid = ticket.request_id
            granted = self._granted.get(rid)
            if granted is not None:
                box.post(rid, AcquireResult(AcquireStatus.GRANTED, granted))
                continue
            route = self._outboxes.route_of(rid)
            if route is not None:  # already waiting (a re-submit): its answer comes here
                self._outboxes.route(rid, box, route[1])
                continue
            if rid in self._waiters:  # waiting in a ``resume`` call: answered there
                continue
            ticket.arrival_time, ticket.deadline = now, now + queue_timeout_s  # this actor's clock
            admission = self._core.admit(ticket)
            if not admission.admitted:
                box.post(rid, AcquireResult(AcquireStatus.REJECTED, None, admission.reason,
                                            admission.detail, admission.retry_after_s))
                continue
            self._meter.admitted(now, ticket.remaining_estimate)
            self._outboxes.route(rid, box, now)
        self._pump()
        return Answers(box.epoch, box.take())

    async def poll(self, client_id: str, wait_s: float) -> Answers:
        """`client_id`'s outbox epoch and answers: at once if it holds any, else the first ones
        within `wait_s` (none: {}). One poll per client at a time; a newer one supersedes it."""
        self._ensure_maintenance()
        box = self._outboxes.box(client_id, self._clock())
        return Answers(box.epoch, await box.poll(wait_s, self._clock))

    async def release_many(self, items: list[Release]) -> None:
        """Free each request's slot and settle its tenant's quota; feed the finished ones' observations
        to drift; then one dispatch."""
        self._ensure_maintenance()
        for item in items:
            self._release(item)
        self._pump()

    # -- unbatched calls -------------------------------------------------------------------------

    async def resume(
        self, ticket: Ticket, replica_id: str, generated: int, queue_timeout_s: float,
        replica_failed: bool = False,
    ) -> AcquireResult:
        """Queue a preempted (or failed-over) request again after `generated` tokens in all.

        `replica_failed`: the request's replica failed under it; the replica is dropped at once, so no
        grant goes to it (it re-registers with its next heartbeat if it was alive after all), and the
        other requests on it fail over the same way when their streams break.
        """
        self._ensure_maintenance()
        now = self._clock()
        rid = ticket.request_id
        if replica_failed:
            if self._ledger.drop(replica_id):
                logger.warning("replica %s failed under %s; dropped, its requests resume elsewhere",
                               replica_id, rid)
                self._preempt.pop(replica_id, None)
            self._forget_replica(replica_id)
        self._granted.pop(rid, None)
        self._ledger.release(replica_id, rid, 0, now)
        self._preempt.get(replica_id, set()).discard(rid)
        if self._core.in_flight_ticket(rid) is None:  # granted by an earlier instance: a new arrival
            ticket.arrival_time = now
        try:
            self._core.resume(ticket, generated, now + queue_timeout_s)
        except (UnknownRequestError, ValueError) as exc:
            return AcquireResult(AcquireStatus.REJECTED, None, RejectReason.INVALID, str(exc))
        return await self._wait_for_grant(rid, queue_timeout_s, now)

    async def _wait_for_grant(self, rid: str, queue_timeout_s: float, now: float) -> AcquireResult:
        future: asyncio.Future[AcquireResult] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = future
        self._pump()
        if future.done():  # answered by this very pump (capacity was free): no timer, no shield
            del self._waiters[rid]
            return self._outcome(future.result(), now)
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), queue_timeout_s + 0.01)
        except TimeoutError:
            for ticket in self._core.expire_due():  # this one, and any other now due
                self._answer(ticket.request_id, _EXPIRED)
            if not future.done():  # not due by the core's clock yet: withdraw it anyway
                self._core.cancel(rid)
                future.set_result(_EXPIRED)
            answer = future.result()
        except asyncio.CancelledError:
            self._withdraw(rid)
            raise
        finally:
            self._waiters.pop(rid, None)
        return self._outcome(answer, now)

    def _outcome(self, answer: AcquireResult, since: float) -> AcquireResult:
        """A waiter's answer as its caller gets it: a grant carries the wait since `since`."""
        if answer.status is AcquireStatus.GRANTED:
            return replace(answer, queue_wait_s=self._clock() - since)
        return answer

    def _release(self, item: Release) -> None:
        request_id, output_tokens = item.request_id, item.output_tokens
        self._granted.pop(request_id, None)
        ticket = self._core.in_flight_ticket(request_id)
        freed = ticket.prompt_tokens + (output_tokens or 0) if ticket is not None else 0
        self._ledger.release(item.replica_id, request_id, freed, self._clock())
        if output_tokens is None:
            self._core.abort(request_id)
        else:
            if ticket is not None:  # else it was granted by an earlier instance of this actor
                # The drift actor holds the statistics (the feed sends them there); the core's own
                # tracker is not read in this process.
                self._core.complete(request_id, output_tokens, observe=False)
                if self._drift is not None:
                    self._feed.observe(ticket, output_tokens)
            self._meter.completed(self._clock(), output_tokens)
        if item.timings is not None:
            self._book.record(item.timings, item.replica_id)

    async def cancel(self, request_id: str) -> None:
        self._withdraw(request_id)
        self._pump()

    async def report(self, replica_id: str, capacity: Capacity,
                     prefix_cache: PrefixCacheCounters | None = None) -> list[str]:
        """A replica's heartbeat, with its engine's prefix-cache counters (for /metrics); returns the
        requests it must preempt (stop; they resume elsewhere)."""
        self._ensure_maintenance()
        if prefix_cache is not None:
            self._engine_prefix[replica_id] = prefix_cache
        if self._serving is not None and replica_id not in self._serving:
            # Starting, or being stopped by the autoscaler: Serve routes nothing there, so no grants;
            # what runs there finishes and is released as usual.
            capacity = replace(capacity, free_slots=0)
        for rid in self._ledger.report(replica_id, capacity, self._clock()):
            logger.warning("grant %s on %s was never used; releasing it", rid, replica_id)
            self._granted.pop(rid, None)
            self._core.abort(rid)
        self._pump()
        return sorted(self._preempt.pop(replica_id, ()))

    async def view(self) -> SchedulerView:
        book = self._book
        return SchedulerView(
            self._core.snapshot(), self._ledger.summary(), dict(book.histograms),
            dict(book.tokens), dict(book.outcomes), self._autoscale, dict(book.slo),
            dict(book.replica_prefix), dict(self._engine_prefix),
        )

    async def backlog(
        self, window_s: float, decision: ShownDecision | None = None, serving: list[str] | None = None,
    ) -> Backlog:
        """The backlog summary the autoscaling policy scales on (rates over `window_s`); `decision` is
        the policy's previous decision, kept for /metrics; `serving` the replicas Serve routes to now
        (from the next heartbeat on, the others get no grants)."""
        if decision is not None:
            self._autoscale = decision
        if serving is not None:
            self._serving = set(serving)
        core, replicas = self._core, list(self._ledger.replicas())
        running = sum(sum(state.progress.values()) for state in replicas)
        return self._meter.backlog(self._clock(), core.queued_tickets(), core.num_in_flight, len(replicas),
                                   window_s, running, risk=core.risk)

    async def ping(self) -> str:
        return self._core.policy.name

    # -- GET /v1/usage ---------------------------------------------------------------------------

    async def usage(self, tenant: str) -> TenantUsage | None:
        """`tenant`'s own counters, tokens, queue, latency percentiles and quota left, in one call
        (None for an unknown tenant). The caller authenticated `tenant`: nothing of another is read."""
        return tenant_usage(self._core, self._book, tenant)

    # -- soak checks (read-only) -----------------------------------------------------------------

    async def table_sizes(self) -> dict[str, int]:
        """Entries in every table this actor keeps per request or per tenant; benchmarks/bench_soak.py
        checks they stay flat under sustained load. The lazily pruned heaps (deadlines, the policy's
        heap, the dispatcher's running heap) are read directly: they are where a leak would hide."""
        core, replicas = self._core, list(self._ledger.replicas())
        return {
            "waiters": len(self._waiters),
            **self._outboxes.sizes(),
            "granted": len(self._granted),
            "preempt": sum(len(ids) for ids in self._preempt.values()),
            "ledger_granted": sum(len(r.granted) for r in replicas),
            "ledger_pending": sum(len(r.pending) for r in replicas),
            "ledger_active": sum(len(r.active) for r in replicas),
            "ledger_progress": sum(len(r.progress) for r in replicas),
            "core_queued": core.num_queued,
            "core_in_flight": core.num_in_flight,
            "core_deadlines": len(core._deadlines),
            "core_front": len(core._front),
            "policy_queued": len(core.policy),
            "policy_heap": len(getattr(core.policy, "_heap", ())),
            "dispatcher_running": len(self._dispatcher._running),
            "book_histograms": len(self._book.histograms),
            "book_outcomes": len(self._book.outcomes),
            "book_replica_prefix": len(self._book.replica_prefix),
            "engine_prefix": len(self._engine_prefix),
            "drift_pending": self._feed.pending,
        }

    # -- internals -------------------------------------------------------------------------------

    def _forget_replica(self, replica_id: str) -> None:
        """A replica the ledger dropped: its prefix-cache figures go too (re-registering starts anew)."""
        self._book.forget_replica(replica_id)
        self._engine_prefix.pop(replica_id, None)

    def _withdraw(self, request_id: str) -> None:
        """Cancel a queued request, or free the slot of a granted one."""
        if self._core.cancel(request_id) is not None:
            self._answer(request_id, _CANCELLED)
            return
        replica = self._granted.pop(request_id, None)
        if replica is not None:
            self._ledger.release(replica, request_id)
            self._core.abort(request_id)

    def _pump(self) -> None:
        """Grant what the core dispatcher grants; answer callers whose deadline passed."""
        step = self._dispatcher.step()
        for ticket in step.expired:
            self._answer(ticket.request_id, _EXPIRED)
        for ticket, replica in step.preempted:  # told to the replica in its next heartbeat's answer
            self._preempt.setdefault(replica, set()).add(ticket.request_id)
        for ticket, replica in step.grants:
            rid = ticket.request_id
            if not self._answer(rid, AcquireResult(AcquireStatus.GRANTED, replica)):
                self._ledger.release(replica, rid)  # its caller went away meanwhile
                self._core.abort(rid)
                continue
            self._granted[rid] = replica

    def _answer(self, request_id: str, value: AcquireResult) -> bool:
        """Answer `request_id`'s waiter: its client's outbox (a grant there carries the queue wait),
        or a parked call's future. False if nobody waits for it any more."""
        route = self._outboxes.pop_route(request_id)
        if route is not None:
            box, since = route
            if value.status is AcquireStatus.GRANTED:
                value = replace(value, queue_wait_s=self._clock() - since)
            box.post(request_id, value)
            return True
        future = self._waiters.get(request_id)
        if future is None or future.done():
            return False
        future.set_result(value)
        return True

    def _drop_client(self, box: Outbox[AcquireResult]) -> None:
        """A client stopped polling: withdraw what still waits for it, free the grants it never got."""
        granted = [rid for rid, answer in box.answers.items() if answer.status is AcquireStatus.GRANTED]
        if box.waiting or granted:
            logger.warning("client %s stopped polling; withdrawing %d queued requests and freeing %d "
                           "grants", box.client, len(box.waiting), len(granted))
        for rid in box.waiting:
            self._core.cancel(rid)
        for rid in granted:
            self._withdraw(rid)

    def _ensure_maintenance(self) -> None:
        """Keep the background loops up (maintenance, the drift feed); each logs its own failures."""
        if self._maintenance is None or self._maintenance.done():
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        if self._drift is not None and (self._feeding is None or self._feeding.done()):
            self._feeding = asyncio.get_running_loop().create_task(self._feed.run(self._drift))

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(_MAINTENANCE_S)
            try:
                for replica_id, grants in self._ledger.expire(self._clock()):
                    logger.warning("replica %s stopped reporting; dropping %d grants",
                                   replica_id, len(grants))
                    self._forget_replica(replica_id)
                    for rid in grants:
                        self._granted.pop(rid, None)
                        self._core.abort(rid)
                for box in self._outboxes.drop_stale(self._clock(), self._client_grace_s):
                    self._drop_client(box)
                self._pump()
            except Exception:
                logger.exception("scheduler maintenance failed; continuing")
