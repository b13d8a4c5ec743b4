"""The scheduler's backlog, summarised for the autoscaler: what waits, how fast it comes, how fast it goes.

`BacklogMeter` is fed by whoever runs the core (the scheduler actor, the simulator) with each
admission, ``admitted(now, tokens)``, and is read with ``backlog(now, ...)`` about once a second. Its
answer, a `Backlog`, is small (a few numbers and one row per QoS tier), so the autoscaling policy can
fetch it with one actor call.

Measurement (time is passed in; the meter never reads a clock):

* **arrival rate** ``lambda``: corrected output-token estimates admitted in the last ``window_s``,
  divided by the window (by the time since the first admission while the meter is younger).
* **service** per replica: the scheduler's own measurement (`driftsched.core.risk.ServiceRate`, the
  one SLO admission divides the work ahead by), reported as its sums, output tokens generated while
  the pool was saturated and the replica-seconds of that time, so the scaler can weigh them against
  its configured prior (a few seconds alone say little). One measurement serves both readers: the
  scaler and admission cannot disagree about how fast the pool is. It counts tokens as they are
  generated, only while the dispatcher finds no replica with room for the queue's head, and not for
  ``SETTLE_S`` after the replica count changed (a replica that has just joined is handed a full
  batch at once and spends its first seconds prefilling it; a queue-aware pool grows exactly while a
  queue stands, so without the settling time most saturated spells would be warm-ups and the rate
  would read low, bench_autoscale).
* **per-tier waits**: for each QoS tier with queued work, its queued tokens, the oldest ticket's wait
  and the tightest ``latency_slo_s`` of that tier's tenants.
* **predicted risk** (when the caller passes the scheduler's `RiskModel`, as the scheduler actor does):
  per tier, the TTFT objective of its most urgent request, the corrected output tokens ahead of a new
  request of the tier, the predicted wait and whether the tier is at risk (`RiskModel.tier_risks`, the
  figures admission and the holdback act on); and the estimated output tokens/s that SLO admission
  refused over the window: refused demand is demand the pool did not have the capacity for.

Work is counted in output tokens, plus the queued prompts' uncached tokens apart
(``queued_prefill_tokens``): prefill is an order of magnitude cheaper per token on the engines modelled
here, but long prompts (documents, agents' contexts) can still make it most of a backlog's time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from driftsched.core.request import Ticket
from driftsched.core.risk import RiskModel, TierRisk

_MAX_WINDOW_S = 600.0


@dataclass(slots=True, frozen=True)
class TierBacklog:
    """Queued work of one QoS tier."""

    tier: int
    queued: int
    queued_tokens: float
    oldest_wait_s: float
    latency_slo_s: float | None
    """The tightest end-to-end objective among the tier's tenants with queued work (None: none set)."""
    ttft_slo_s: float | None = None
    """TTFT objective of the tier's most urgent on-time request (None: no risk model, or none on time)."""
    ahead_tokens: float = 0.0
    """Corrected output tokens the scheduler predicts ahead of a new request of this tier."""
    predicted_wait_s: float | None = None
    """That work over the pool's measured rate (None: not measured yet)."""
    at_risk: bool = False
    """The scheduler judges the tier at risk (`driftsched.core.risk.RiskModel.at_risk`)."""


@dataclass(slots=True, frozen=True)
class Backlog:
    """What the autoscaler reads from the scheduler (see module docstring)."""

    time: float
    queued: int
    queued_tokens: float
    """Corrected estimates of the output tokens still to come, over all queued tickets."""
    in_flight: int
    replicas: int
    """Replicas registered with the scheduler (heartbeating) now."""
    arrival_tokens_per_s: float
    served_tokens: float = 0.0
    """Output tokens generated while the pool was saturated, decayed (`ServiceRate.sums`)."""
    saturated_replica_s: float = 0.0
    """Replica-seconds of that time, decayed alike: ``served_tokens / saturated_replica_s`` is the
    measured output tokens/s of one saturated replica (0: nothing measured yet)."""
    tiers: tuple[TierBacklog, ...] = ()
    queued_prefill_tokens: float = 0.0
    """Prompt tokens the queued tickets must prefill: their uncached prompts (`Ticket.uncached_prompt`)."""
    prefill_tokens_per_s: float | None = None
    """One replica's prefill tokens/s as the scheduler's placement knows it (`Placement.prefill_rate`:
    measured from the replicas' reports, its prior until then); None: unknown."""
    shed_tokens_per_s: float = 0.0
    """Estimated output tokens/s that SLO admission refused over the window (demand the pool lacked
    the capacity for; admitted arrivals alone would hide it)."""


class BacklogMeter:
    """Arrival rate from admissions, and the backlog's summary; see the module docstring."""

    def __init__(self, latency_slo_s: Mapping[str, float | None]) -> None:
        self._slo = dict(latency_slo_s)  # tenant -> its objective
        self._window_s = 30.0
        self._arrivals: deque[tuple[float, float]] = deque()
        self._first_arrival: float | None = None

    def admitted(self, now: float, tokens: float) -> None:
        """A ticket was admitted with `tokens` estimated output tokens."""
        if self._first_arrival is None:
            self._first_arrival = now
        arrivals = self._arrivals
        arrivals.append((now, tokens))
        while arrivals[0][0] < now - _MAX_WINDOW_S:  # no read may look further back: bounded without reads
            arrivals.popleft()

    def backlog(
        self, now: float, queued: Iterable[Ticket], in_flight: int, replicas: int, window_s: float = 30.0,
        risk: RiskModel | None = None, prefill_tokens_per_s: float | None = None,
    ) -> Backlog:
        """The summary now; `queued` are the waiting tickets, `window_s` the rate window, `risk` the
        scheduler's risk model (`Scheduler.risk`: its service rate, predicted risk and refused demand;
        None: none of them) and `prefill_tokens_per_s` one replica's prefill rate
        (`Backlog.prefill_tokens_per_s`)."""
        self._window_s = min(max(window_s, 1e-3), _MAX_WINDOW_S)
        tiers: dict[int, list[float]] = {}  # tier -> [queued, tokens, oldest queued_at, slo or inf]
        total_tokens, prefill, count = 0.0, 0.0, 0
        for ticket in queued:
            tokens = ticket.remaining_estimate
            prefill += ticket.uncached_prompt
            row = tiers.setdefault(ticket.tier, [0, 0.0, now, float("inf")])
            row[0] += 1
            row[1] += tokens
            row[2] = min(row[2], ticket.queued_at)
            slo = self._slo.get(ticket.tenant)
            if slo is not None:
                row[3] = min(row[3], slo)
            total_tokens += tokens
            count += 1
        predicted: dict[int, TierRisk] = {}
        served, replica_s = 0.0, 0.0
        if risk is not None:
            predicted = {r.tier: r for r in risk.tier_risks(now)}
            served, replica_s = risk.rate.sums()
        return Backlog(
            time=now,
            queued=count,
            queued_tokens=total_tokens,
            queued_prefill_tokens=prefill,
            prefill_tokens_per_s=prefill_tokens_per_s,
            in_flight=in_flight,
            replicas=replicas,
            arrival_tokens_per_s=self._arrival_rate(now),
            served_tokens=served,
            saturated_replica_s=replica_s,
            tiers=tuple(
                _tier_row(tier, int(n), tokens, max(0.0, now - oldest), None if math.isinf(slo) else slo,
                          predicted.get(tier))
                for tier, (n, tokens, oldest, slo) in sorted(tiers.items())
            ),
            shed_tokens_per_s=risk.shed.rate(now, self._window_s) if risk is not None else 0.0,
        )

    def _arrival_rate(self, now: float) -> float:
        horizon = now - self._window_s
        while self._arrivals and self._arrivals[0][0] < horizon:
            self._arrivals.popleft()
        if self._first_arrival is None:
            return 0.0
        span = min(self._window_s, max(now - self._first_arrival, 1.0))
        return sum(tokens for _, tokens in self._arrivals) / span


def _tier_row(tier: int, queued: int, tokens: float, oldest_wait_s: float, latency_slo_s: float | None,
              risk: TierRisk | None) -> TierBacklog:
    if risk is None:
        return TierBacklog(tier, queued, tokens, oldest_wait_s, latency_slo_s)
    return TierBacklog(tier, queued, tokens, oldest_wait_s, latency_slo_s, risk.ttft_slo_s,
                       risk.ahead_tokens, risk.predicted_wait_s, risk.at_risk)
