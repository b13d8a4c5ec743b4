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

Replicas call ``report`` each heartbeat and whenever a request starts or ends there (that is also how
they register, and re-register after this actor restarts), and keep one long ``orders`` poll open: a
preemption or a revoked grant is posted to the replica's order box the moment the dispatcher decides
it, and the poll returns it at once (the heartbeat's answer carries any the poll did not take). Each
order names the request and the serial of the grant it stops, so an order that reaches the replica
before the granted request does stops that request when it comes, and never a later run of the same
request. The stopped stream ends "preempted"; the ingress then submits a *resumption* (a `Submission`
with `resume` set), batched with its other submissions: a preempted request goes back to the queue
with its generated tokens appended to its prompt, and a revoked one is already back at its place (the
dispatcher put it there when it revoked it); either way its next grant comes to the client's outbox.
``cancel`` withdraws a request wherever it is (client disconnect). The actor holds
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
    grant: int = 0
    """A grant's serial, unique within this actor instance: the run it starts sends it to the replica,
    and orders to stop a run name it."""


_EXPIRED = AcquireResult(AcquireStatus.EXPIRED, detail="queue deadline passed")
_CANCELLED = AcquireResult(AcquireStatus.CANCELLED)


@dataclass(slots=True, frozen=True)
class Resumption:
    """What a resubmitted request says of its run that stopped: preempted, revoked or failed over."""

    replica_id: str
    grant: int
    """The serial of the grant that run had (`AcquireResult.grant`): a grant with another serial is
    a newer one, and is the answer."""
    generated: int
    """Output tokens generated in all, over every run so far."""
    replica_failed: bool = False
    """The replica failed under it: it is dropped at once, so no grant goes there (it re-registers
    with its next report if it was alive after all)."""


@dataclass(slots=True, frozen=True)
class Submission:
    """One request of a ``submit``: its ticket and how long it may wait for a slot; `resume` when it
    continues a run that stopped."""

    ticket: Ticket
    queue_timeout_s: float
    resume: Resumption | None = None


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


def _granted(replica_id: str, grant: int) -> AcquireResult:
    return AcquireResult(AcquireStatus.GRANTED, replica_id, grant=grant)


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
        self._orders: dict[str, Outbox[int]] = {}  # replica id -> requests to stop there -> grant
        self._book = RequestBook()
        self._engine_prefix: dict[str, PrefixCacheCounters] = {}  # replica -> its last reported counters
        self._granted: dict[str, tuple[str, int]] = {}  # request id -> (replica, grant serial)
        self._grants = 0  # serials handed out
        self._clients: dict[str, str] = {}  # request id -> the client its answers go to
        self._revoked: dict[str, float] = {}  # revoked, back in the queue, resumption not seen yet
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
            if item.resume is not None:
                self._resubmit(box, item, item.resume, now)
                continue
            granted = self._granted.get(rid)
            if granted is not None:
                box.post(rid, _granted(*granted))
                continue
            route = self._outboxes.route_of(rid)
            if route is not None:  # already waiting (a re-submit): its answer comes here
                self._outboxes.route(rid, box, route[1])
                continue
            ticket.arrival_time, ticket.deadline = now, now + queue_timeout_s  # this actor's clock
            admission = self._core.admit(ticket)
            if not admission.admitted:
                box.post(rid, AcquireResult(AcquireStatus.REJECTED, None, admission.reason,
                                            admission.detail, admission.retry_after_s))
                continue
            self._meter.admitted(now, ticket.remaining_estimate)
            self._outboxes.route(rid, box, now)
            self._clients[rid] = client_id
        self._pump()
        return Answers(box.epoch, box.take())

    def _resubmit(
        self, box: Outbox[AcquireResult], item: Submission, stopped: Resumption, now: float
    ) -> None:
        """A resumption (module docstring): its answer is the request's next grant, in `box`."""
        ticket = item.ticket
        rid = ticket.request_id
        self._clients[rid] = box.client
        revoked = self._revoked.pop(rid, None) is not None
        if revoked:  # back at its place already; it may have produced tokens after all
            self._core.catch_up(rid, stopped.generated)
        granted = self._granted.get(rid)
        if granted is not None and granted[1] != stopped.grant:  # granted again (or a re-submit)
            box.post(rid, _granted(*granted))
            return
        route = self._outboxes.route_of(rid)
        if route is not None or self._core.is_queued(rid):  # waiting: its answer comes here
            self._outboxes.route(rid, box, now if route is None else route[1])
            return
        if revoked:  # it left the queue since (expired, cancelled): that answer was not collected
            box.post(rid, _EXPIRED)
            return
        replica_id = stopped.replica_id
        if stopped.replica_failed:
            if self._ledger.drop(replica_id):
                logger.warning("replica %s failed under %s; dropped, its requests resume elsewhere",
                               replica_id, rid)
            self._forget_replica(replica_id)
        self._granted.pop(rid, None)
        self._ledger.release(replica_id, rid, 0, now)
        if self._core.in_flight_ticket(rid) is None:  # granted by an earlier instance: a new arrival
            ticket.arrival_time = now
        try:
            self._core.resume(ticket, stopped.generated, now + item.queue_timeout_s)
        except (UnknownRequestError, ValueError) as exc:
            box.post(rid, AcquireResult(AcquireStatus.REJECTED, None, RejectReason.INVALID, str(exc)))
            return
        self._outboxes.route(rid, box, now)

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

    # -- the replicas' calls -----------------------------------------------------------------------

    async def orders(self, replica_id: str, wait_s: float) -> dict[str, int]:
        """`replica_id`'s long poll: the requests it must stop (request id -> the serial of the grant
        to stop), as soon as there are any, else {} after `wait_s`."""
        self._ensure_maintenance()
        return await self._order_box(replica_id).poll(wait_s, self._clock)

    def _release(self, item: Release) -> None:
        request_id, output_tokens = item.request_id, item.output_tokens
        self._clients.pop(request_id, None)
        granted = self._granted.pop(request_id, None)
        if self._revoked.pop(request_id, None) is not None:
            # It ended before its resumption: it had started on its replica after all (and may have
            # finished there), or its client left. The grant made since was never used; a copy back in
            # the queue is withdrawn, and a finished run still teaches drift.
            if granted is not None:
                self._ledger.release(granted[0], request_id)
            queued = self._core.cancel(request_id)
            if queued is not None:
                self._answer(request_id, _CANCELLED)
                if output_tokens is not None and self._drift is not None:
                    self._feed.observe(queued, output_tokens)
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
        if item.timings is not None:
            self._book.record(item.timings, item.replica_id)

    async def cancel(self, request_id: str) -> None:
        self._withdraw(request_id)
        self._pump()

    async def report(self, replica_id: str, capacity: Capacity,
                     prefix_cache: PrefixCacheCounters | None = None) -> dict[str, int]:
        """A replica's report, with its engine's prefix-cache counters (for /metrics); returns the
        orders its ``orders`` poll has not taken (request id -> grant serial to stop)."""
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
        return self._order_box(replica_id).take()

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
        queued = [*core.queued_tickets(), *self._dispatcher.waiting_ahead()]  # ahead: waiting in engines
        return self._meter.backlog(self._clock(), queued, core.num_in_flight, len(replicas),
                                   window_s, risk=core.risk,
                                   prefill_tokens_per_s=self._ledger.prefill_rate())

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
            **self._outboxes.sizes(),
            "granted": len(self._granted),
            "clients": len(self._clients),
            "revoked": len(self._revoked),
            "orders": sum(len(box.answers) for box in self._orders.values()),
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
        """A replica the ledger dropped: its prefix-cache figures and orders go too (re-registering
        starts anew; what it ran resumes elsewhere)."""
        self._book.forget_replica(replica_id)
        self._engine_prefix.pop(replica_id, None)
        self._orders.pop(replica_id, None)

    def _order_box(self, replica_id: str) -> Outbox[int]:
        box = self._orders.get(replica_id)
        if box is None:
            box = self._orders[replica_id] = Outbox(replica_id, self._epoch, self._clock())
        return box

    def _stop(self, replica_id: str, request_id: str) -> None:
        """Order `replica_id` to stop `request_id`'s current run, now (its ``orders`` poll returns)."""
        granted = self._granted.pop(request_id, None)
        self._order_box(replica_id).post(request_id, granted[1] if granted is not None else 0)

    def _withdraw(self, request_id: str) -> None:
        """Cancel a queued request, or free the slot of a granted one."""
        self._revoked.pop(request_id, None)
        self._clients.pop(request_id, None)
        if self._core.cancel(request_id) is not None:
            self._answer(request_id, _CANCELLED)
            return
        granted = self._granted.pop(request_id, None)
        if granted is not None:
            self._ledger.release(granted[0], request_id)
            self._core.abort(request_id)

    def _pump(self) -> None:
        """Grant what the core dispatcher grants; answer callers whose deadline passed."""
        step, now = self._dispatcher.step(), self._clock()
        for ticket in step.expired:
            self._answer(ticket.request_id, _EXPIRED)
        for ticket, replica in step.preempted:  # its stream ends "preempted"; a resumption follows
            self._stop(replica, ticket.request_id)
        for ticket, replica in step.revoked:  # back in the queue; its next answer goes to its client
            rid = ticket.request_id
            self._stop(replica, rid)
            self._revoked[rid] = now
            client = self._clients.get(rid)
            box = self._outboxes.existing(client) if client is not None else None
            if box is not None:
                self._outboxes.route(rid, box, now)
        for ticket, replica in step.grants:
            rid = ticket.request_id
            self._grants += 1
            if not self._answer(rid, _granted(replica, self._grants)):
                self._ledger.release(replica, rid)  # its caller went away meanwhile
                self._core.abort(rid)
                continue
            self._granted[rid] = (replica, self._grants)

    def _answer(self, request_id: str, value: AcquireResult) -> bool:
        """Post `request_id`'s answer to its client's outbox (a grant there carries the queue wait).
        False if nobody waits for it any more."""
        route = self._outboxes.pop_route(request_id)
        if route is None:
            return False
        box, since = route
        if value.status is AcquireStatus.GRANTED:
            value = replace(value, queue_wait_s=self._clock() - since)
        box.post(request_id, value)
        return True

    def _drop_client(self, box: Outbox[AcquireResult]) -> None:
        """A client stopped polling: withdraw what still waits for it, free the grants it never got."""
        granted = [rid for rid, answer in box.answers.items() if answer.status is AcquireStatus.GRANTED]
        if box.waiting or granted:
            logger.warning("client %s stopped polling; withdrawing %d queued requests and freeing %d "
                           "grants", box.client, len(box.waiting), len(granted))
        for rid in box.waiting:
            self._core.cancel(rid)
            self._revoked.pop(rid, None)
        for rid in granted:
            self._withdraw(rid)
        for rid in [rid for rid, client in self._clients.items() if client == box.client]:
            del self._clients[rid]

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
                now = self._clock()
                for rid in [r for r, at in self._revoked.items() if now - at > self._client_grace_s]:
                    logger.warning("revoked request %s was never resumed; withdrawing it", rid)
                    self._withdraw(rid)
                self._pump()
            except Exception:
                logger.exception("scheduler maintenance failed; continuing")
