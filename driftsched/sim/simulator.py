"""Discrete-event simulator: the production scheduling core on virtual time, N simulated L4 replicas.

The loop takes the next event, an arrival (from the sorted workload) or a step end (from a heap),
and handles it (vidur's shape):

* an **arrival**: the request (without its true length) goes through the same `Scheduler.submit` the
  live service uses; the true output length stays in the simulator, for the engine only;
* a **step end** on a replica: the engine's finished sequences are completed in the scheduler (which
  feeds the drift tracker), then the replica pulls work and starts its next step.

Replicas pull: a replica takes the policy's next ticket while it has a free sequence slot and enough
free KV for that ticket's prompt plus *estimated* output, and nothing waits inside the engine. So the
backlog stays in the scheduler, where the policy orders it, and the engine's own FIFO never decides.
An engine that cannot admit more fuses decode iterations up to its next event or the next arrival.

References (simulator-only): ``sjf-oracle`` orders by the true output length (the limit of ordering);
``sjf-uncorrected`` runs SJF with drift correction disabled (raw estimates).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from driftsched.core.clock import ManualClock
from driftsched.core.config import CoreConfig, TenantConfig
from driftsched.core.request import Request, Ticket
from driftsched.core.scheduler import Scheduler
from driftsched.core.stats import SchedulerStats
from driftsched.sim.engine import ContinuousBatchEngine, EngineSequence
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.workload import Workload, WorkloadItem
from policies import make_policy

ORACLE = "sjf-oracle"
UNCORRECTED = "sjf-uncorrected"
REFERENCES = (ORACLE, UNCORRECTED)


@dataclass(slots=True)
class RunResult:
    """Per-request records of one simulated run (NaN where a request never got that far)."""

    policy: str
    items: Sequence[WorkloadItem]
    admitted: np.ndarray
    reject_reason: list[str]
    dispatch: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    raw_estimate: np.ndarray
    corrected_estimate: np.ndarray
    category: list[str]
    stats: SchedulerStats
    num_preemptions: int
    sim_time_s: float


def core_config_for(workload: Workload, perf: PerfModel, base: CoreConfig | None = None) -> CoreConfig:
    """The workload's tenants on top of `base` (default settings otherwise), context capped by the KV."""
    tenants = [
        TenantConfig(
            name=t.name,
            tier=t.tier,
            weight=t.weight,
            requests_per_minute=t.requests_per_minute,
            tokens_per_minute=t.tokens_per_minute,
            max_queued=10**9,
        )
        for t in workload.tenants
    ]
    data = base.model_dump() if base is not None else {}
    data["tenants"] = [t.model_dump() for t in tenants]
    scheduler = data.setdefault("scheduler", {})
    scheduler["max_queued_total"] = 10**9
    scheduler["max_request_tokens"] = min(scheduler.get("max_request_tokens", 32768), perf.kv_capacity_tokens)
    return CoreConfig.model_validate(data)


class Simulation:
    """One policy over one workload on `replicas` engines; `run()` returns the records."""

    def __init__(
        self,
        workload: Workload,
        policy: str,
        perf: PerfModel,
        replicas: int,
        config: CoreConfig,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        self.items = workload.items
        self.policy_name = policy
        self.oracle = policy == ORACLE
        if policy in REFERENCES:
            policy_obj = make_policy("sjf")
            if policy == UNCORRECTED:
                data = config.model_dump()
                data["estimator"]["drift"]["enabled"] = False
                config = CoreConfig.model_validate(data)
        else:
            policy_obj = make_policy(policy, **config.scheduler.policy_options)
        self.clock = ManualClock()
        self.scheduler = Scheduler(config, policy_obj, self.clock)
        self.engines = [ContinuousBatchEngine(perf) for _ in range(replicas)]
        self.busy = [False] * replicas
        self._pending: list[list[EngineSequence]] = [[] for _ in range(replicas)]  # finishing this step
        self.progress = progress
        n = len(self.items)
        self.dispatch = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.raw = np.full(n, np.nan)
        self.corrected = np.full(n, np.nan)
        self.admitted = np.zeros(n, dtype=bool)
        self.reject_reason = [""] * n
        self.category = [""] * n
        self._events: list[tuple[float, int]] = []  # (step end time, replica)
        self._next_arrival = self.items[0].arrival_s if self.items else math.inf

    def run(self) -> RunResult:
        items, events, clock = self.items, self._events, self.clock
        n, i = len(items), 0
        while i < n or events:
            if i < n and (not events or items[i].arrival_s <= events[0][0]):
                clock.now = items[i].arrival_s
                self._arrive(i)
                i += 1
                self._next_arrival = items[i].arrival_s if i < n else math.inf
                if self.progress is not None and i % 1000 == 0:
                    self.progress(1000)
                for r, busy in enumerate(self.busy):
                    if not busy:
                        self._kick(r)
            else:
                t, r = heapq.heappop(events)
                clock.now = t
                self._step_end(r)
        if self.progress is not None:
            self.progress(n % 1000)
        return RunResult(
            self.policy_name,
            self.items,
            self.admitted,
            self.reject_reason,
            self.dispatch,
            self.first_token,
            self.finish,
            self.raw,
            self.corrected,
            self.category,
            self.scheduler.snapshot(),
            sum(e.num_preemptions for e in self.engines),
            clock.now,
        )

    def _arrive(self, i: int) -> None:
        item = self.items[i]
        request = Request(
            str(i),
            item.tenant,
            item.prompt_tokens,
            item.max_tokens,
            item.arrival_s,
            category=item.category,
            priority=item.priority,
            prompt_text=item.prompt_text,
        )
        intake = self.scheduler.intake
        rejection = intake.validate(request)
        if rejection is None:
            ticket = intake.ticket(request, item.arrival_s)
            if self.oracle:  # the reference limit: order by the true length (simulator only)
                ticket.corrected_estimate = float(item.output_tokens)
            admission = self.scheduler.admit(ticket)
        else:
            admission = self.scheduler.submit(request)  # counts the rejection the same way
        if admission.ticket is None:
            self.reject_reason[i] = admission.reason.value if admission.reason else "rejected"
            return
        self.admitted[i] = True
        self.raw[i] = admission.ticket.raw_estimate
        self.corrected[i] = admission.ticket.corrected_estimate
        self.category[i] = admission.ticket.category

    def _pull(self, engine: ContinuousBatchEngine) -> None:
        scheduler, now = self.scheduler, self.clock.now
        while engine.free_seq_slots > 0 and not engine.waiting:
            head: Ticket | None = scheduler.peek()
            if head is None:
                return
            # An idle engine takes even a head that looks too big, or the head would never run.
            if head.prompt_tokens + head.corrected_estimate > engine.free_kv_tokens and not engine.is_idle:
                return
            ticket = scheduler.dispatch()
            if ticket is None:
                return
            i = int(ticket.request_id)
            item = self.items[i]
            self.dispatch[i] = now
            engine.add(EngineSequence(i, max(1, item.prompt_tokens), max(1, item.output_tokens)))

    def _kick(self, r: int) -> None:
        engine = self.engines[r]
        self._pull(engine)
        if engine.is_idle:
            self.busy[r] = False
            return
        # Fuse decode steps up to the next arrival: only an arrival can bring this engine new work
        # before one of its own sequences finishes.
        duration, events = engine.step(max(0.0, min(self._next_arrival - self.clock.now, 3600.0)))
        end = self.clock.now + duration
        for seq in events.first_token:
            self.first_token[cast(int, seq.request_id)] = end
        self._pending[r] = events.finished
        self.busy[r] = True
        heapq.heappush(self._events, (end, r))

    def _step_end(self, r: int) -> None:
        now = self.clock.now
        scheduler = self.scheduler
        for seq in self._pending[r]:
            i = cast(int, seq.request_id)
            self.finish[i] = now
            scheduler.complete(str(i), seq.output_tokens, observe=not self.oracle)
        self._pending[r] = []
        self._kick(r)
