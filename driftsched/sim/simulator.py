"""Discrete-event simulator: the production scheduling core on virtual time, N simulated L4 replicas.

The loop takes the next event, an arrival (from the sorted workload) or a step end (from a heap),
and handles it (vidur's shape):

* an **arrival**: the request (without its true length) goes through the same `Scheduler.submit` the
  live service uses; the true output length stays in the simulator, for the engine only;
* a **step end** on a replica: the engine's finished sequences are completed in the scheduler (which
  feeds the drift tracker), then the replica pulls work and starts its next step.

The simulator is the service on virtual time:

* **the same intake inputs**: each request carries exactly what a live request built from the same
  workload item carries (`driftsched.bench.prompts.intake_fields`: synthesised prompt text, the declared
  category, ``max_tokens``), never the item's true length;
* **the same dispatch and placement**: after every arrival and every engine step the core `Dispatcher`
  grants the policy's head to the replica the `Placement` fit rule picks (a free slot and KV room for
  the prompt, from what the engines report), as the scheduler actor does with heartbeats;
* **the same deadlines**: a ticket still queued ``queue_timeout_s`` after its arrival expires, as the
  gateway's ``queue_timeout_s`` makes it answer 504; expired requests are failures in the results;
* **the same policy options**: what a policy derives from the service (`policies.resolve_options`:
  `bounded`'s horizon from the queue timeout, a tenant's from its latency objective) it derives here
  from this run's ``queue_timeout_s`` and tenants.

An engine that cannot admit more fuses decode iterations up to its next event or the next arrival.

**Prefix caching.** Items carry their prompt's block hashes (`WorkloadItem.prefix_blocks`, in the
workload's ``block_tokens``); requests carry them to the scheduler as the ingress would, and the engines
cache blocks as vLLM's automatic prefix caching does (``block_tokens`` 0: no caching, as before). The
placement is the configured one (`PlacementConfig.rule`, `Placement.from_config`) on the workload's
block size, with the performance model's prefill rate as its prior, and told that these engines charge
each running request its whole prompt (``shared_kv=False``). Each run records every request's cached
prompt tokens (its first admission's) and its replica, and the engines' prefix-cache counters.

Three estimates (simulator-only variants of every policy, `estimate_variant`): ``<policy>`` runs on the
drift-corrected estimate, as the service does; ``<policy>-uncorrected`` with drift correction disabled
(raw estimates); ``<policy>-oracle`` with the true output length in place of the estimate (the limit of
ordering by size; the estimator then observes nothing). ``sjf-oracle`` and ``sjf-uncorrected`` are the
references every `driftsched simulate` runs. A policy that declares its own preemption (vLLM's priority
policy preempts at once) gets it here as in the service (`driftsched.core.policy.preemption_for`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from driftsched.bench.prompts import IntakeFields, intake_fields
from driftsched.core.backlog import Backlog, BacklogMeter
from driftsched.core.clock import ManualClock
from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S, CoreConfig, TenantConfig
from driftsched.core.dispatch import Dispatcher
from driftsched.core.placement import Capacity, Placement
from driftsched.core.policy import PolicyContext, preemption_for
from driftsched.core.request import Request
from driftsched.core.scheduler import Scheduler
from driftsched.core.stats import SchedulerStats
from driftsched.sim.engine import ContinuousBatchEngine, EngineSequence
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.workload import Workload, WorkloadItem
from policies import POLICIES, make_policy, resolve_options

ESTIMATES = ("corrected", "uncorrected", "oracle")
"""What a policy's order may read as a request's output length: the service's drift-corrected estimate,
the raw estimate, or the true length (simulator only)."""
ORACLE = "sjf-oracle"
UNCORRECTED = "sjf-uncorrected"
REFERENCES = (ORACLE, UNCORRECTED)


def estimate_variant(name: str) -> tuple[str, str]:
    """(policy, estimate) for a simulated policy name: ``bounded-oracle`` is ``("bounded", "oracle")``,
    ``bounded`` is ``("bounded", "corrected")``. A registered name is always itself."""
    if name not in POLICIES:
        for estimate in ESTIMATES[1:]:
            base = name.removesuffix(f"-{estimate}")
            if base != name and (base in POLICIES or ":" in base):
                return base, estimate
    return name, ESTIMATES[0]


def is_variant(name: str) -> bool:
    """Whether `name` is a reference run of a policy on other estimates (``-uncorrected``, ``-oracle``)."""
    return estimate_variant(name)[1] != ESTIMATES[0]


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
    expired: np.ndarray
    stats: SchedulerStats
    num_preemptions: int
    sim_time_s: float
    busy_s: list[float]
    """Seconds each replica spent stepping (utilisation = busy / simulated time)."""
    generated_tokens: int
    cached_tokens: np.ndarray | None = None
    """Prompt tokens each request found in its engine's prefix cache at its first admission (NaN: never
    started)."""
    replica: np.ndarray | None = None
    """The replica each request ran on last (-1: never granted)."""
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    """The engines' prefix-cache counters summed (vLLM's ``prefix_cache_queries`` / ``hits``, tokens)."""
    replica_work_tokens: tuple[int, ...] = ()
    """Tokens each replica computed: the prompt tokens each run of a request prefilled there (its
    cached prefix not counted; a run resumed after a preemption prefills again) and output tokens."""


PREFILL_RATE_PROMPT_TOKENS = 8192
"""The prompt length at which the performance model's prefill rate is the placement's prior."""


def perf_prefill_rate(perf: PerfModel) -> float:
    """Prefill tokens/s of one idle replica on a `PREFILL_RATE_PROMPT_TOKENS`-token prompt: the rate the
    placement assumes until it has measured its replicas'."""
    return PREFILL_RATE_PROMPT_TOKENS / perf.prefill_time_s(PREFILL_RATE_PROMPT_TOKENS)


def with_placement(config: CoreConfig, rule: str) -> CoreConfig:
    """`config` placing by `rule` (a `PLACEMENT_RULES` name)."""
    data = config.model_dump()
    data["scheduler"]["placement"]["rule"] = rule
    return CoreConfig.model_validate(data)


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
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        intake: Sequence[IntakeFields] | None = None,
    ) -> None:
        if not queue_timeout_s > 0:
            raise ValueError(f"queue_timeout_s must be > 0 seconds, got {queue_timeout_s}")
        self.items = workload.items
        self.intake = intake if intake is not None else [
            intake_fields(it, workload.block_tokens) for it in self.items
        ]
        self.policy_name = policy
        base, estimate = estimate_variant(policy)
        self.oracle = estimate == "oracle"
        self.queue_timeout_s = queue_timeout_s
        if estimate == "uncorrected":
            data = config.model_dump()
            data["estimator"]["drift"]["enabled"] = False
            config = CoreConfig.model_validate(data)
        # The configured options belong to the configured policy; any other runs on its defaults.
        options = config.scheduler.policy_options if base == config.scheduler.policy else {}
        context = PolicyContext.of(config, queue_timeout_s)  # and each derives from this run
        policy_obj = make_policy(base, **resolve_options(base, options, context))
        self.clock = ManualClock()
        self.scheduler = Scheduler(config, policy_obj, self.clock)
        self.block_tokens = workload.block_tokens
        self.placement = Placement.from_config(
            config.scheduler,
            replica_timeout_s=math.inf,
            block_tokens=self.block_tokens or None,
            prefill_tokens_per_s=perf_prefill_rate(perf),
            shared_kv=False,  # the simulated engine charges every running request its whole prompt
        )
        self.dispatcher = Dispatcher(
            self.scheduler,
            self.placement,
            preemption_for(policy_obj, config.scheduler.preemption),
            progress=self._progress,
        )
        self._seqs: dict[str, tuple[int, EngineSequence]] = {}  # running request id -> (replica, seq)
        self._retired: set[int] = set()  # autoscaling: replicas taken out of placement
        self.engines = [ContinuousBatchEngine(perf, block_tokens=self.block_tokens) for _ in range(replicas)]
        self._work = [0] * replicas  # tokens each replica computed (`RunResult.replica_work_tokens`)
        for r in range(replicas):
            self._report(r)
        self.busy = [False] * replicas
        self.busy_s = [0.0] * replicas
        self._generated = 0
        self._pending: list[list[EngineSequence]] = [[] for _ in range(replicas)]  # finishing this step
        self.progress = progress
        n = len(self.items)
        self.dispatch = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.raw = np.full(n, np.nan)
        self.corrected = np.full(n, np.nan)
        self.admitted = np.zeros(n, dtype=bool)
        self.expired = np.zeros(n, dtype=bool)
        self.reject_reason = [""] * n
        self.category = [""] * n
        self.cached = np.full(n, np.nan)
        self.replica = np.full(n, -1, dtype=np.int64)
        self._events: list[tuple[float, int]] = []  # (step end time, replica)
        self._next_arrival = self.items[0].arrival_s if self.items else math.inf
        # Autoscaling (benchmarks/bench_autoscale.py): timed actions, retired replicas, the backlog meter.
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._timer_seq = 0
        self.started_at = [0.0] * replicas
        self.drained_at: list[float | None] = [None] * replicas
        self.meter = BacklogMeter({t.name: t.latency_slo_s for t in config.tenants})

    def run(self) -> RunResult:
        items, events, clock = self.items, self._events, self.clock
        n, i = len(items), 0
        while i < n or events:
            next_event = min(self._next_arrival, events[0][0] if events else math.inf)
            if self._timers and self._timers[0][0] <= next_event:  # an autoscaling action (see `at`)
                t, _, action = heapq.heappop(self._timers)
                clock.now = max(clock.now, t)
                action()
            elif i < n and (not events or items[i].arrival_s <= events[0][0]):
                clock.now = items[i].arrival_s
                self._arrive(i)
                i += 1
                self._next_arrival = items[i].arrival_s if i < n else math.inf
                if self.progress is not None and i % 1000 == 0:
                    self.progress(1000)
                self._dispatch()
            else:
                t, r = heapq.heappop(events)
                clock.now = t
                self._step_end(r)
        # Whatever is still queued once the engines drain waits for an event that never comes; the
        # gateway would expire it at its deadline, so do the same.
        if self.scheduler.num_queued:
            clock.now = max(clock.now, max(t.deadline or 0.0 for t in self.scheduler.queued_tickets()))
            self._dispatch()
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
            self.expired,
            self.scheduler.snapshot(),
            sum(e.num_preemptions for e in self.engines),
            clock.now,
            self.busy_s,
            self._generated,
            self.cached,
            self.replica,
            sum(e.prefix_query_tokens for e in self.engines),
            sum(e.prefix_hit_tokens for e in self.engines),
            tuple(self._work),
        )

    def _arrive(self, i: int) -> None:
        item, fields = self.items[i], self.intake[i]
        request = Request(
            str(i),
            item.tenant,
            fields.prompt_tokens,
            fields.max_tokens,
            item.arrival_s,
            category=fields.category,
            prompt_text=fields.prompt_text,
            deadline=item.arrival_s + self.queue_timeout_s,
            prefix_blocks=item.prefix_blocks,
            session_id=item.session_id,
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
        self.meter.admitted(item.arrival_s, admission.ticket.remaining_estimate)
        self.raw[i] = admission.ticket.raw_estimate
        self.corrected[i] = admission.ticket.corrected_estimate
        self.category[i] = admission.ticket.category

    def _progress(self, request_id: str) -> int:
        """Tokens a running request generated in its current run (the preemption guard reads it)."""
        running = self._seqs.get(request_id)
        return running[1].generated if running is not None else 0

    def _report(self, r: int) -> None:
        """The engine's exact capacity, as a replica's heartbeat reports it live."""
        if r in self._retired:  # a retired replica takes no new work; it only finishes what it runs
            if self.engines[r].is_idle and self.drained_at[r] is None:
                self.drained_at[r] = self.clock.now
            return
        engine = self.engines[r]
        seqs = [*engine.running, *engine.waiting] if self.placement.needs_progress else []
        capacity = Capacity(
            max_slots=engine.max_slots,
            free_slots=engine.free_seq_slots,
            free_kv_tokens=engine.free_kv_tokens,
            active=None,
            kv_capacity_tokens=engine.kv_capacity,
            progress=tuple(seq.generated for seq in seqs),
            progress_ids=tuple(str(seq.request_id) for seq in seqs),
            running_slots=engine.running_slots,
            waiting_ids=engine.waiting_ids() if engine.running_slots else (),
        )
        self.placement.report(str(r), capacity, self.clock.now)

    def _dispatch(self) -> None:
        """Grant what the core dispatcher grants; start the idle engines that received work."""
        step, now = self.dispatcher.step(), self.clock.now
        for ticket in step.expired:
            self.expired[int(ticket.request_id)] = True
        lost: set[str] = set()  # revoked, but finished in the step under way: it completes where it ran
        for ticket, _ in step.revoked:  # back in the queue, or granted elsewhere; its replica drops it
            rid = ticket.request_id
            r, seq = self._seqs[rid]
            if self.engines[r].abort(seq):
                del self._seqs[rid]
                continue
            # The stop lost the race, as one can live (the report that showed it waiting predates the
            # step that ran it): its queued copy, or the grant made for it elsewhere, is withdrawn.
            lost.add(rid)
            if self.scheduler.is_queued(rid):
                self.scheduler.restart(rid)
        unstarted: set[str] = set()
        for ticket, _ in step.preempted:
            running = self._seqs.get(ticket.request_id)
            if running is None:  # granted earlier in this same step (no minimum run): it never started
                unstarted.add(ticket.request_id)
                self.scheduler.requeue(ticket.request_id, 0, now + self.queue_timeout_s)
                continue
            r, seq = running
            if self.engines[r].abort(seq):  # else it finished in the step under way: let it complete
                del self._seqs[ticket.request_id]
                self.scheduler.requeue(ticket.request_id, seq.generated, now + self.queue_timeout_s)
        for ticket, replica in step.grants:
            if ticket.request_id in lost:
                self.placement.release(replica, ticket.request_id)
                continue
            if ticket.request_id in unstarted:
                continue
            i, r = int(ticket.request_id), int(replica)
            # A resumed request prefills its prompt plus what it generated before, then continues.
            output = self.items[i].output_tokens - ticket.generated
            seq = EngineSequence(i, max(1, ticket.prompt_tokens), max(1, output), self.items[i].prefix_blocks)
            if np.isnan(self.dispatch[i]):
                self.dispatch[i] = now
            self.replica[i] = r
            self._seqs[ticket.request_id] = (r, seq)
            self.engines[r].add(seq)
        for r, busy in enumerate(self.busy):
            if not busy:
                self._kick(r)

    def _kick(self, r: int) -> None:
        engine = self.engines[r]
        if engine.is_idle:
            self.busy[r] = False
            return
        # Fuse decode steps up to the next arrival: only an arrival can bring this engine new work
        # before one of its own sequences finishes.
        duration, events = engine.step(max(0.0, min(self._next_arrival - self.clock.now, 3600.0)))
        end = self.clock.now + duration
        work = events.num_tokens
        for seq in events.first_token:
            work += seq.prompt_tokens - seq.cached_tokens
            i = cast(int, seq.request_id)
            if np.isnan(self.first_token[i]):  # a resumed request keeps its first first token
                self.first_token[i] = end
                self.cached[i] = seq.cached_tokens
        self._pending[r] = events.finished
        self.busy[r] = True
        self.busy_s[r] += duration
        self._generated += events.num_tokens
        self._work[r] += work
        heapq.heappush(self._events, (end, r))

    def _step_end(self, r: int) -> None:
        now = self.clock.now
        scheduler, placement, replica = self.scheduler, self.placement, str(r)
        for seq in self._pending[r]:
            i = cast(int, seq.request_id)
            self.finish[i] = now
            self._seqs.pop(str(i), None)
            scheduler.complete(str(i), self.items[i].output_tokens, observe=not self.oracle)
            placement.release(replica, str(i), now=now)
        self._pending[r] = []
        self.busy[r] = False
        self._report(r)
        self._dispatch()

    # -- autoscaling (additive: a run without these calls is unchanged) -------------------------------

    def at(self, time_s: float, action: Callable[[], object]) -> None:
        """Run `action` at simulated `time_s` (while arrivals or engine steps remain)."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (time_s, self._timer_seq, action))

    def add_replica(self) -> int:
        """Start one more engine now (its start-up time is the caller's to model); its index."""
        r = len(self.engines)
        self.engines.append(ContinuousBatchEngine(self.engines[0].perf, block_tokens=self.block_tokens))
        self._work.append(0)
        self.busy.append(False)
        self.busy_s.append(0.0)
        self._pending.append([])
        self.started_at.append(self.clock.now)
        self.drained_at.append(None)
        self._report(r)
        self._dispatch()
        return r

    def retire_replica(self, r: int) -> None:
        """Take replica `r` out of placement: it gets no new grants and stops once its sequences end."""
        self._retired.add(r)
        self.placement.drop(str(r))
        self._report(r)

    @property
    def active_replicas(self) -> list[int]:
        """Replicas not retired."""
        return [r for r in range(len(self.engines)) if r not in self._retired]

    def backlog(self, window_s: float) -> Backlog:
        """The scheduler's backlog as the scheduler actor publishes it to the autoscaling policy."""
        queued = [*self.scheduler.queued_tickets(), *self.dispatcher.waiting_ahead()]  # ahead: in engines
        return self.meter.backlog(self.clock.now, queued,
                                  self.scheduler.num_in_flight, len(self.active_replicas), window_s,
                                  risk=self.scheduler.risk,
                                  prefill_tokens_per_s=self.placement.prefill_rate())
