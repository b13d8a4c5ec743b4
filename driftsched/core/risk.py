"""The risk model: how fast the pool serves, what waits ahead of a request, and who is above its share.

The scheduler feeds it from what it sees (admissions, dispatches, completions with their observed
output tokens, on its injected clock), and admission, the per-tier holdback and the autoscaler read it.
Everything is in **output tokens**: the decode work that dominates how long a backlog takes (prefill is
an order of magnitude cheaper per token on the engines modelled here).

**Service rate** (`ServiceRate`). ``mu`` = output tokens generated per replica-second while the pool
is *saturated* (work waits and the dispatcher found no replica with room for the queue's head: only
then is the pool's throughput its capacity; otherwise it is the demand), decayed with half-life ``h``
over that saturated time, so an idle spell ages nothing. With ``n`` replicas registered, the pool
serves ``n · mu``. For `settle_s` after the replica count changes no sample is taken (a new replica
spends its first seconds prefilling a full batch), while the pool rate already uses the new count: the
prediction errs toward a shorter wait, never a longer one.

Tokens are counted as they are generated: between two readings of what the running requests have
generated so far (`ServiceRate.generated`, from the replicas' progress reports), the new tokens are
those of the requests completed meanwhile plus the change in that sum, credited in proportion to the
saturated share of the interval. Counting completions alone reads low exactly where it matters: a
queue stands while the replicas are full of long requests, which generate throughout and complete
after it has cleared (paper and saas mixes at load 0.7 measured about 0.7 of the capacity that way).
A caller that never reads the progress gets completions counted while saturated.

**Work ahead** (`QueuedWork`). A ticket ``t`` of tier ``k`` with TTFT deadline ``d`` is predicted to
be dispatched after the work

    A(t) = Σ remaining corrected estimate of the queued tickets u with tier(u) ≤ k and now < deadline(u) ≤ d
           + every resumed ticket waiting (served before any other)

and its predicted wait is ``A(t) / (n · mu)``. The approximation, stated: the tickets counted are the
ones a tier-then-deadline order serves before ``t``, less those already late (a deadline-aware order
may serve them last, as `slo` does). For FIFO, strict tier priority, EDF and tier-then-EDF orders they
are a *subset* of what is really served first (FIFO serves every queued ticket first; priority also the
more important tickets with later deadlines), and later arrivals of more important tiers only add to
the real wait, so the prediction is a lower bound on the wait for them: admission that
sheds only beyond it never sheds a request those orders would have served in time, up to the error of
``mu``. A size-first order (`sjf`, `bounded`) lets a small ticket pass larger ones, so for it the bound
does not hold; the margin of `AdmissionConfig.shed_margin` is what protects it there. Why the corrected
estimate matters: ``mu`` is measured in *observed* tokens, so ``A`` must be an absolute estimate of
the tokens still to come; an uncorrected one misjudges the work ahead by the drift factor.

**Fair share** (`DemandMeter`). Each tenant's demand ``d_i`` is the estimated output tokens/s it sent
(admitted or not), decayed with `share_half_life_s`; beside it, the part that was admitted. Its fair
share is its weighted max-min allocation of the pool rate: tenants in order of ``d_i / w_i`` get
``min(d_i, C · w_i / W)`` of the capacity ``C`` still unallocated (``W``: the weight of the tenants not
yet served), so a tenant that asks for less than its weight's share leaves the rest to the others. A
tenant is *above its share* when ``d_i`` exceeds its allocation by more than `share_tolerance`; when
the demand in all fits the pool, nobody is. The allocations sum to the pool's rate, so holding each
tenant above its share to its allocation (admission's holdback) sheds about the physical excess.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from driftsched.core.config import AdmissionConfig
from driftsched.core.request import Ticket

_LN2 = math.log(2.0)


def _halving(half_lives: float) -> float:
    """0.5 ** half_lives."""
    return math.exp(-_LN2 * half_lives)


SETTLE_S = 30.0
"""Seconds after a change in the replica count during which the rate takes no samples."""
_SHED_MEMORY_S = 600.0


class ServiceRate:
    """Output tokens/s of the pool, measured while it is saturated (see module docstring)."""

    __slots__ = ("_busy_s", "_half_life_s", "_read_s", "_read_saturated_s", "_replica_s", "_replicas",
                 "_resized_at", "_running", "_saturated", "_settle_s", "_t", "_tokens", "_unread")

    def __init__(self, half_life_s: float, settle_s: float = SETTLE_S) -> None:
        self._half_life_s = half_life_s
        self._settle_s = settle_s
        self._tokens = 0.0  # decayed tokens generated while saturated
        self._replica_s = 0.0  # decayed saturated replica-seconds
        self._busy_s = 0.0  # decayed saturated seconds: the evidence
        self._t: float | None = None
        self._saturated = False
        self._replicas = 1
        self._resized_at = -math.inf
        self._running: float | None = None  # generated by the running requests at the last reading
        self._unread = 0.0  # tokens of the requests completed since that reading
        self._read_s = 0.0  # seconds since that reading, and the saturated (counted) part of them
        self._read_saturated_s = 0.0

    @property
    def replicas(self) -> int:
        return self._replicas

    def advance(self, now: float, saturated: bool) -> None:
        """Account the time since the last call under the state that held then; `saturated` holds from now."""
        t = self._t
        if t is not None and now > t:
            self._read_s += now - t
        if t is not None and now > t and self._saturated and self._replicas > 0:
            start = max(t, self._resized_at + self._settle_s)
            if now > start:
                dt = now - start
                decay = _halving(dt / self._half_life_s)
                self._tokens *= decay
                self._replica_s = self._replica_s * decay + dt * self._replicas
                self._busy_s = self._busy_s * decay + dt
                self._read_saturated_s += dt
        if t is None or now >= t:
            self._t = now
        self._saturated = saturated

    def set_replicas(self, now: float, replicas: int) -> None:
        """The pool now has `replicas` replicas (the first count given starts no settling time)."""
        if replicas == self._replicas:
            return
        self.advance(now, self._saturated)
        if self._t is not None and self._busy_s > 0:
            self._resized_at = now
        self._replicas = replicas

    def completed(self, now: float, tokens: float) -> None:
        """A request finished with `tokens` output tokens in its last run."""
        self.advance(now, self._saturated)
        if self._running is not None:
            self._unread += tokens
        elif self._saturated and now >= self._resized_at + self._settle_s:
            self._tokens += tokens

    def generated(self, now: float, running_tokens: float) -> None:
        """A reading: the running requests have generated `running_tokens` in their current runs."""
        self.advance(now, self._saturated)
        if self._running is not None and self._read_s > 0:
            new = self._unread + running_tokens - self._running  # < 0 when preempted runs are dropped
            self._tokens = max(0.0, self._tokens + new * self._read_saturated_s / self._read_s)
        elif self._running is not None:
            return  # no time since the last reading: the next one counts these tokens
        self._running, self._unread = running_tokens, 0.0
        self._read_s = self._read_saturated_s = 0.0

    def measured_s(self) -> float:
        """Decayed saturated seconds: the evidence behind the measurement."""
        return self._busy_s

    def sums(self) -> tuple[float, float]:
        """Decayed output tokens generated while saturated, and the replica-seconds they took."""
        return self._tokens, self._replica_s

    def per_replica(self) -> float | None:
        """Output tokens/s of one replica while saturated; None before any saturated time."""
        return self._tokens / self._replica_s if self._replica_s > 0 else None

    def pool(self, min_measured_s: float = 0.0) -> float | None:
        """Output tokens/s of the whole pool now; None until measured over `min_measured_s`, or with
        no replica (nothing can be promised, and nothing is refused for it)."""
        rate = self.per_replica()
        if rate is None or rate <= 0 or self._replicas <= 0 or self._busy_s < min_measured_s:
            return None
        return rate * self._replicas


@dataclass(slots=True, frozen=True)
class Share:
    """One tenant's recent demand against its fair share, in estimated output tokens/s."""

    offered: float
    """What it asked for (admitted or not)."""
    admitted: float
    """What of it was admitted."""
    fair: float
    """Its weighted max-min share of the pool's rate, given everyone's offered demand."""

    def over(self, tolerance: float) -> bool:
        """Whether it asks for more than its share (by more than `tolerance`, a fraction)."""
        return self.offered > self.fair * (1.0 + tolerance) + 1e-9

    def admitted_over(self, tolerance: float) -> bool:
        """Whether what was admitted of it already exceeds its share."""
        return self.admitted > self.fair * (1.0 + tolerance) + 1e-9


class _Decayed:
    """A sum of amounts, each decayed with a half-life since it was added."""

    __slots__ = ("t", "value")

    def __init__(self) -> None:
        self.value, self.t = 0.0, -math.inf

    def add(self, now: float, amount: float, half_life_s: float) -> None:
        self.value = self.at(now, half_life_s) + amount
        self.t = max(self.t, now)

    def at(self, now: float, half_life_s: float) -> float:
        if self.value == 0.0:
            return 0.0
        return self.value * _halving(max(0.0, now - self.t) / half_life_s)


class DemandMeter:
    """Each tenant's recent demand and its weighted max-min fair share of the pool (module docstring)."""

    __slots__ = ("_admitted", "_half_life_s", "_offered", "_start", "_weights", "version")

    def __init__(self, weights: Mapping[str, float], half_life_s: float) -> None:
        self._weights = dict(weights)
        self._half_life_s = half_life_s
        self._offered: dict[str, _Decayed] = {}
        self._admitted: dict[str, _Decayed] = {}
        self._start: float | None = None
        self.version = 0
        """Counts the changes, so a reader may keep `shares` for as long as nothing changed."""

    def offered(self, tenant: str, now: float, tokens: float) -> None:
        """`tenant` asked for `tokens` estimated output tokens at `now` (admitted or not)."""
        if self._start is None:
            self._start = now
        self._offered.setdefault(tenant, _Decayed()).add(now, tokens, self._half_life_s)
        self.version += 1

    def admitted(self, tenant: str, now: float, tokens: float) -> None:
        """`tokens` of what `tenant` asked for at `now` were admitted."""
        self._admitted.setdefault(tenant, _Decayed()).add(now, tokens, self._half_life_s)
        self.version += 1

    def _norm(self, now: float) -> float:
        """The decayed length of the window so far: h/ln2 once the meter is much older than h."""
        h, start = self._half_life_s, self._start if self._start is not None else now
        return max(h / _LN2 * (1.0 - _halving(max(0.0, now - start) / h)), 1e-3)

    def shares(self, now: float, capacity: float) -> dict[str, Share]:
        """Every tenant that asked for anything: its demand and fair share of `capacity` tokens/s
        (weighted max-min: water filling in order of demand per weight)."""
        h, norm = self._half_life_s, self._norm(now)
        offered = {t: d.at(now, h) / norm for t, d in self._offered.items()}
        order = sorted(offered, key=lambda t: offered[t] / self._weight(t))
        left, weight = capacity, sum(self._weight(t) for t in order)
        out: dict[str, Share] = {}
        for tenant in order:
            w = self._weight(tenant)
            fair = min(offered[tenant], left * w / weight) if weight > 0 else 0.0
            admitted = self._admitted[tenant].at(now, h) / norm if tenant in self._admitted else 0.0
            out[tenant] = Share(offered[tenant], admitted, fair)
            left, weight = max(0.0, left - fair), weight - w
        return out

    def _weight(self, tenant: str) -> float:
        return max(self._weights.get(tenant, 1.0), 1e-9)


class _Group:
    """Queued tickets of one (tier, tenant, TTFT objective): the on-time ones in admission order, and
    the late ones (TTFT deadline passed) apart."""

    __slots__ = ("entries", "last_deadline", "late", "monotone", "work")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, float]] = {}  # on time: request id -> (deadline, work)
        self.late: dict[str, float] = {}  # late: request id -> work
        self.work = 0.0  # of the on-time entries
        self.last_deadline = -math.inf
        self.monotone = True  # deadlines never decrease in admission order

    def settle(self, now: float) -> None:
        """Move the entries whose deadline has passed to `late` (amortised O(1) each when monotone)."""
        entries = self.entries
        if self.monotone:
            while entries:
                rid = next(iter(entries))
                due, work = entries[rid]
                if due > now:
                    return
                self._make_late(rid, work)
        else:
            for rid in [rid for rid, (due, _) in entries.items() if due <= now]:
                self._make_late(rid, entries[rid][1])

    def _make_late(self, rid: str, work: float) -> None:
        del self.entries[rid]
        self.late[rid] = work
        self.work = max(0.0, self.work - work) if self.entries else 0.0

    def pop(self, rid: str) -> None:
        if self.late.pop(rid, None) is None:
            _, work = self.entries.pop(rid)
            self.work = max(0.0, self.work - work) if self.entries else 0.0

    def ahead(self, deadline: float) -> float:
        """Work of the on-time entries due no later than `deadline` (call `settle` first)."""
        if self.last_deadline <= deadline:
            return self.work
        if self.monotone:  # only the newest entries are due later: subtract them, newest first
            later = 0.0
            for due, work in reversed(self.entries.values()):
                if due <= deadline:
                    break
                later += work
            return max(0.0, self.work - later)
        return sum(work for due, work in self.entries.values() if due <= deadline)


class QueuedWork:
    """Queued tickets indexed for `ahead` and the most urgent ticket per tier (module docstring).

    Tickets are grouped by (tier, tenant, TTFT objective): inside a group, admission order is deadline
    order (arrival + the same objective), so the work due by a deadline is the group's sum less its
    newest entries, a group due entirely before it costs O(1), and tickets turn late oldest first.
    Resumed tickets are kept apart: they go before everything else.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[int, str, float], _Group] = {}
        # request id -> (its ticket, its group; None for a resumed ticket)
        self._where: dict[str, tuple[Ticket, tuple[int, str, float] | None]] = {}
        self._front_work: dict[str, float] = {}
        self._urgent: dict[int, list[tuple[float, int, int, Ticket]]] = {}  # tier -> heap by deadline
        self._live_per_tier: dict[int, int] = {}
        self._count = 0

    def add(self, ticket: Ticket, resumed: bool = False) -> None:
        rid, work = ticket.request_id, ticket.remaining_estimate
        if resumed:
            self._where[rid] = (ticket, None)
            self._front_work[rid] = work
            return
        key = key_of(ticket)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        deadline = ticket.ttft_deadline
        if deadline < group.last_deadline:
            group.monotone = False
        group.last_deadline = max(group.last_deadline, deadline)
        group.entries[rid] = (deadline, work)
        group.work += work
        self._where[rid] = (ticket, key)
        tier = ticket.tier
        self._live_per_tier[tier] = self._live_per_tier.get(tier, 0) + 1
        self._count += 1
        heapq.heappush(self._urgent.setdefault(tier, []), (deadline, ticket.seq, self._count, ticket))

    def remove(self, ticket: Ticket) -> None:
        rid = ticket.request_id
        entry = self._where.get(rid)
        if entry is None or entry[0] is not ticket:
            return
        del self._where[rid]
        key = entry[1]
        if key is None:
            self._front_work.pop(rid, None)
            return
        group = self._groups[key]
        group.pop(rid)
        if not group.entries and not group.late:
            del self._groups[key]
        tier = key[0]
        live = self._live_per_tier[tier] = self._live_per_tier[tier] - 1
        heap = self._urgent[tier]
        if len(heap) > 2 * live + 64:
            heap[:] = [e for e in heap if self._live(e[3])]
            heapq.heapify(heap)

    def _live(self, ticket: Ticket) -> bool:
        entry = self._where.get(ticket.request_id)
        return entry is not None and entry[0] is ticket and entry[1] is not None

    def ahead(self, tier: int, deadline: float, now: float, exclude: Ticket | None = None) -> float:
        """Corrected output tokens to be served before a ticket of `tier` due at `deadline`: every
        resumed ticket, and the on-time queued ones of tiers <= `tier` due no later (less `exclude`'s
        own work when it is counted). Late tickets are not counted: a deadline-aware order may serve
        them last, and under any order they only make the wait longer."""
        front, by_tenant = self.ahead_by_tenant(tier, deadline, now)
        total = front + sum(by_tenant.values())
        if exclude is not None and self._live(exclude):
            own = self._groups[key_of(exclude)].entries.get(exclude.request_id)
            if own is not None and own[0] <= deadline:
                total -= own[1]
        return max(0.0, total)

    def ahead_by_tenant(self, tier: int, deadline: float, now: float) -> tuple[float, dict[str, float]]:
        """`ahead`, split: the resumed tickets' work, and each tenant's part of the rest."""
        by_tenant: dict[str, float] = {}
        for (k, tenant, _), group in self._groups.items():
            if k <= tier:
                group.settle(now)
                by_tenant[tenant] = by_tenant.get(tenant, 0.0) + group.ahead(deadline)
        return sum(self._front_work.values()), by_tenant

    def most_urgent(self, tier: int, now: float) -> Ticket | None:
        """The on-time queued (not resumed) ticket of `tier` with the earliest TTFT deadline."""
        heap = self._urgent.get(tier)
        while heap:
            deadline, _, _, ticket = heap[0]
            if deadline > now and self._live(ticket):
                return ticket
            heapq.heappop(heap)  # gone, or late for good
        return None

    def tiers(self) -> list[int]:
        """Tiers with queued (not resumed) tickets, most important first."""
        return sorted(tier for tier, n in self._live_per_tier.items() if n > 0)


def key_of(ticket: Ticket) -> tuple[int, str, float]:
    """The `QueuedWork` group of a ticket."""
    return (ticket.tier, ticket.tenant, ticket.ttft_slo_s)


@dataclass(slots=True, frozen=True)
class TierRisk:
    """One tier's predicted risk now, as admission, the holdback and the autoscaler read it."""

    tier: int
    ttft_slo_s: float
    """TTFT objective of the tier's most urgent queued request."""
    ahead_tokens: float
    """Corrected output tokens ahead of a new request of this tier with that objective."""
    predicted_wait_s: float | None
    """`ahead_tokens` over the pool's measured rate; None before the rate is measured."""
    at_risk: bool
    """Its most urgent request is projected past `AdmissionConfig.risk_share` of its objective."""


class ShedLog:
    """Estimated output tokens refused by SLO admission, for the autoscaler (refused demand is still
    demand: without it a pool that sheds would look like one that keeps up)."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: deque[tuple[float, float]] = deque()

    def add(self, now: float, tokens: float) -> None:
        events = self._events
        events.append((now, tokens))
        while events[0][0] < now - _SHED_MEMORY_S:
            events.popleft()

    def rate(self, now: float, window_s: float) -> float:
        """Refused tokens/s over the last `window_s` seconds."""
        window_s = min(max(window_s, 1e-3), _SHED_MEMORY_S)
        return sum(tokens for t, tokens in self._events if t >= now - window_s) / window_s


class RiskModel:
    """The measurements and the prediction together (module docstring); owned by the `Scheduler`."""

    def __init__(self, config: AdmissionConfig, weights: Mapping[str, float]) -> None:
        self.config = config
        self.rate = ServiceRate(config.rate_half_life_s)
        self.demand = DemandMeter(weights, config.share_half_life_s)
        self.queued = QueuedWork()
        self.shed = ShedLog()
        self._shares: tuple[tuple[float, float, int], dict[str, Share]] | None = None

    def pool_rate(self) -> float | None:
        """The pool's output tokens/s, once measured over `min_measured_s`."""
        return self.rate.pool(self.config.min_measured_s)

    def shares(self, now: float) -> dict[str, Share] | None:
        """Every tenant's demand and fair share of the pool's rate now; None before it is measured.
        (Kept while time, rate and demand stay the same: dispatch asks for every grant of a step.)"""
        rate = self.pool_rate()
        if rate is None:
            return None
        key = (now, rate, self.demand.version)
        if self._shares is None or self._shares[0] != key:
            self._shares = (key, self.demand.shares(now, rate))
        return self._shares[1]

    def over_share(self, tenant: str, now: float) -> bool:
        """Whether `tenant` asks for more than its fair share now (False before the rate is measured)."""
        shares = self.shares(now)
        share = shares.get(tenant) if shares is not None else None
        return share is not None and share.over(self.config.share_tolerance)

    def wait_s(self, ahead_tokens: float) -> float | None:
        rate = self.pool_rate()
        return None if rate is None else ahead_tokens / rate

    def projected_share(self, ticket: Ticket, now: float) -> float:
        """Share of a queued ticket's TTFT objective it is projected to spend waiting: what it has
        waited plus its predicted wait (what it has waited alone before the rate is measured)."""
        if not math.isfinite(ticket.ttft_slo_s):
            return 0.0
        waited = max(0.0, now - ticket.arrival_time)
        wait = self.wait_s(self.queued.ahead(ticket.tier, ticket.ttft_deadline, now, exclude=ticket))
        return (waited + (wait or 0.0)) / ticket.ttft_slo_s

    def at_risk(self, tier: int, now: float, share: float | None = None) -> Ticket | None:
        """The most urgent queued ticket of `tier` if it is at risk (projected past `share` of its
        objective; default `AdmissionConfig.risk_share`), else None."""
        ticket = self.queued.most_urgent(tier, now)
        limit = self.config.risk_share if share is None else share
        if ticket is None or self.projected_share(ticket, now) <= limit:
            return None
        return ticket

    def tier_risks(self, now: float) -> tuple[TierRisk, ...]:
        """Every tier with queued work: its objective, the work ahead of a new request, the predicted
        wait, and whether it is at risk."""
        out = []
        for tier in self.queued.tiers():
            urgent = self.queued.most_urgent(tier, now)
            if urgent is None or not math.isfinite(urgent.ttft_slo_s):
                continue
            ahead = self.queued.ahead(tier, now + urgent.ttft_slo_s, now)
            out.append(TierRisk(tier, urgent.ttft_slo_s, ahead, self.wait_s(ahead),
                                self.projected_share(urgent, now) > self.config.risk_share))
        return tuple(out)
