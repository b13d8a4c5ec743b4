"""llm-d flow control, as a peer to compare with: strict priority bands, token-fair flows, SLO deadlines.

Source: llm-d/llm-d-router ``pkg/epp/framework/plugins/flowcontrol/``. A flow is (fairness id, priority
band); the gateway picks the most important band that has work (bands are strict priority), then a flow
within it by the band's fairness policy, then that flow's head by its ordering policy. Here:

* **band** = the tier (0 first); **flow** = the tenant (the fairness id) within the band;
* **fairness**: the virtual token counter of ``fairness/vtc/vtc.go``: the flow with the lowest counter
  goes next and its counter grows by ``input_weight · prompt tokens + output_weight · output guess`` (1,
  3 and a fixed 128-token guess by default, as there: llm-d has no output estimate of its own); a flow
  that joins or comes back is lifted to the lowest counter among the band's active flows, so idle time
  earns no burst (the rule of the VTC paper, Sheng et al., OSDI 2024, which llm-d's policy follows);
* **ordering**: ``ordering/slodeadline``: earliest ``received + x-llm-d-slo-ttft-ms`` first, ties in
  arrival order; the header's value is the request's TTFT objective.

It reads no output estimate, so its ``-uncorrected`` and ``-oracle`` runs order alike. Not emulated:
the saturation detectors and per-band holdback, which decide *when* a request leaves the gateway, not
in what order (admission, not ordering, in this code base).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from driftsched.core.policy import Policy
from driftsched.core.request import Ticket
from policies.base import LazyHeap, ttft_deadline


class LlmdFlowPolicy(Policy):
    """Strict tier bands; lowest virtual token counter among tenants; TTFT deadline within a tenant."""

    name: ClassVar[str] = "llmd-flow"
    admission: ClassVar[Mapping[str, Any]] = {"enabled": False}
    """It models a system without DriftSched's SLO-aware admission: everything that arrives queues."""

    def __init__(
        self, input_weight: float = 1.0, output_weight: float = 3.0, output_guess_tokens: float = 128.0
    ) -> None:
        if not (input_weight > 0 and output_weight > 0 and output_guess_tokens >= 0):
            raise ValueError(
                "need input_weight > 0, output_weight > 0 and output_guess_tokens >= 0; got "
                f"{input_weight}, {output_weight}, {output_guess_tokens} (llm-d's: 1, 3, 128)"
            )
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.output_guess_tokens = output_guess_tokens
        self._bands: dict[int, dict[str, LazyHeap]] = {}  # band -> flow (tenant) -> its queue
        self._counters: dict[int, dict[str, float]] = {}  # band -> flow -> virtual token counter
        self._where: dict[str, tuple[int, str]] = {}  # request id -> its flow

    def cost(self, ticket: Ticket) -> float:
        """What dispatching the ticket adds to its flow's counter (at least 1, as in llm-d)."""
        guess = self.output_weight * self.output_guess_tokens
        return max(1.0, self.input_weight * ticket.prompt_tokens + guess)

    def add(self, ticket: Ticket, now: float) -> None:
        band, tenant = ticket.tier, ticket.tenant
        flows = self._bands.setdefault(band, {})
        queue = flows.setdefault(tenant, LazyHeap())
        if not len(queue):  # the flow (re)joins: lift it to the lowest active counter
            counters = self._counters.setdefault(band, {})
            active = [counters.get(t, 0.0) for t, q in flows.items() if len(q) and t != tenant]
            counters[tenant] = max(counters.get(tenant, 0.0), min(active, default=0.0))
        queue.push((ttft_deadline(ticket), ticket.arrival_time), ticket)
        self._where[ticket.request_id] = (band, tenant)

    def _pick(self) -> LazyHeap | None:
        """The queue to serve: the most important band with work, then its flow with the lowest
        counter (ties: tenant name, for a deterministic order)."""
        for band in sorted(self._bands):
            counters = self._counters[band]
            active = [(counters[t], t) for t, q in self._bands[band].items() if len(q)]
            if active:
                return self._bands[band][min(active)[1]]
        return None

    def peek(self, now: float) -> Ticket | None:
        queue = self._pick()
        return None if queue is None else queue.peek()

    def pop(self, now: float) -> Ticket | None:
        queue = self._pick()
        if queue is None:
            return None
        ticket = queue.pop()
        assert ticket is not None  # _pick chose a flow with work
        band, tenant = self._where.pop(ticket.request_id)
        self._counters[band][tenant] += self.cost(ticket)
        return ticket

    def remove(self, ticket: Ticket) -> bool:
        flow = self._where.get(ticket.request_id)
        if flow is None or not self._bands[flow[0]][flow[1]].discard(ticket):
            return False
        del self._where[ticket.request_id]
        return True

    def on_finish(self, ticket: Ticket, output_tokens: int) -> None:
        """VTC charges its guess at dispatch and nothing at completion."""

    def __len__(self) -> int:
        return len(self._where)
