"""SLO-aware ordering: earliest TTFT deadline first, smaller requests a bounded step ahead, late ones last.

Each ticket carries the objectives its tenant was promised (`driftsched.core.slo`): its TTFT deadline
``D = arrival + T`` (T its TTFT objective: 1.5 s for tier 0 up to 60 s for tier 3 by default). The queue
is ordered by

    key = min(D + o, E),    o = size_share · T · u,    u = s / (s + size_ref) in [0, 1)

where s is the estimated KV area still to come (``ĉ · (p + ĉ/2)``, prompt p, drift-corrected remaining
output estimate ĉ, as in `policies.sjf`) and E the ticket's queue deadline (none: no cap). The deadline
makes the order tier-weighted: a tier-0 request that arrives a minute after a tier-3 one is still due
first. The offset makes it size-aware within a share of each request's own objective: among requests due
at about the same time the smaller go first, as a smaller request's service delays fewer of the others
behind it. The cap keeps a large request from being ordered past its own queue deadline, where it could
only expire (a tier whose objective is the queue timeout is ordered by deadline alone).

**Late tickets.** A ticket still queued after its TTFT deadline has missed its objective whatever happens
next. Under EDF it would now outrank everything on time and make those miss too (EDF's domino effect in
overload). So when the ticket at the head of the on-time queue is found late (at `peek`/`pop`, ``now >
D``), it moves to a late queue, served (in key order) by the rule `late` names:

* ``"last"`` (default): only while no on-time ticket waits. Goodput comes first: in a backlog the late
  requests wait, and some reach their queue deadline, rather than making on-time ones late.
* ``"expiry"``: before the on-time tickets keyed after its queue deadline E. Completion comes first: a
  late request is served before it would expire, at the cost of on-time ones that had slack.
* ``"keep"``: never moved; plain EDF with the size offset (a reference that shows the domino).

Bound. While a ticket i is on time it is overtaken only by on-time tickets j with ``key_j < key_i``
(ties: admission order), i.e. due (or expiring) less than ``o_i ≤ size_share · T_i`` after its own
deadline: a request of the same objective that arrived ``size_share · T`` or more after it never goes
first. Under ``"last"`` no late ticket overtakes it; under ``"expiry"`` only late ones whose queue deadline
comes before ``key_i``. Caller contract: `now` is passed in; the key is static, so `rank` (for
preemption) does not change while a ticket runs. Cost: O(log n) amortised per operation.
"""

from __future__ import annotations

import math
from typing import ClassVar

from driftsched.core.policy import RankedPolicy
from driftsched.core.request import Ticket
from driftsched.core.slo import tier_objectives
from policies.base import LazyHeap, ttft_deadline
from policies.sjf import kv_area

LATE_RULES = ("last", "expiry", "keep")


def ttft_objective_s(ticket: Ticket) -> float:
    """The TTFT objective the ticket is held to (its tier's default when it carries none)."""
    return ticket.ttft_slo_s if math.isfinite(ticket.ttft_slo_s) else tier_objectives(ticket.tier).ttft_s


class SloPolicy(RankedPolicy):
    """Earliest TTFT deadline plus a bounded size offset; late tickets after on-time ones (module doc)."""

    name: ClassVar[str] = "slo"

    def __init__(self, size_share: float = 0.25, size_ref: float = 75_000.0, late: str = "last") -> None:
        if not 0 <= size_share <= 1:
            raise ValueError(f"size_share must be in [0, 1] (of the TTFT objective), got {size_share}")
        if not size_ref > 0:
            raise ValueError(f"size_ref must be > 0 token-steps, got {size_ref}; try 75000")
        if late not in LATE_RULES:
            raise ValueError(f"late must be one of {LATE_RULES}, got {late!r}")
        self.size_share = size_share
        self.size_ref = size_ref
        self.late = late
        self._on_time = LazyHeap()
        self._late = LazyHeap()

    def offset_s(self, ticket: Ticket) -> float:
        """How much later than its TTFT deadline the ticket is ordered (below ``size_share · T``)."""
        size = kv_area(ticket)
        return self.size_share * ttft_objective_s(ticket) * size / (size + self.size_ref)

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        """Its TTFT deadline plus its size offset, never past its queue deadline."""
        expires = ticket.deadline if ticket.deadline is not None else math.inf
        return (min(ttft_deadline(ticket) + self.offset_s(ticket), expires),)

    def late_key(self, ticket: Ticket) -> tuple[float, ...]:
        """A late ticket's place: its queue deadline (`late="expiry"`), else after every on-time one."""
        expires = ticket.deadline if ticket.deadline is not None and self.late == "expiry" else math.inf
        return (expires, *self.key(ticket))

    def rank(self, ticket: Ticket, now: float) -> tuple[float, ...]:
        """Static: the on-time key (preemption compares a waiting head with running tickets)."""
        return (*self.key(ticket), ticket.seq)

    def add(self, ticket: Ticket, now: float) -> None:
        self._on_time.push(self.key(ticket), ticket)

    def _queue(self, now: float) -> LazyHeap:
        """The queue to serve now, after moving the late tickets found at the on-time queue's head."""
        on_time, late = self._on_time, self._late
        if self.late == "keep":
            return on_time
        while (head := on_time.peek()) is not None and ttft_deadline(head) < now:
            on_time.pop()
            late.push(self.late_key(head), head)
        if not len(late) or not len(on_time):
            return on_time if len(on_time) else late
        late_head, on_time_head = late.peek(), on_time.peek()
        assert late_head is not None and on_time_head is not None
        return late if self.late_key(late_head)[0] < self.key(on_time_head)[0] else on_time

    def peek(self, now: float) -> Ticket | None:
        return self._queue(now).peek()

    def pop(self, now: float) -> Ticket | None:
        return self._queue(now).pop()

    def remove(self, ticket: Ticket) -> bool:
        return self._on_time.discard(ticket) or self._late.discard(ticket)

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None:
        """The order needs no completion feedback (the estimator corrects the estimates)."""

    def __len__(self) -> int:
        return len(self._on_time) + len(self._late)


__all__ = ["LATE_RULES", "SloPolicy", "ttft_objective_s"]
