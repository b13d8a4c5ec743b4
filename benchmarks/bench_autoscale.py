"""Queue-aware vs slot-based autoscaling in the simulator, on a bursty trace.

The trace is the ``paper`` workload's arrival process (tenants, sizes, drift) with its time axis
warped into alternating quiet and burst phases: ``--quiet-load`` and ``--burst-load`` times the
capacity of ``--base-replicas`` L4 replicas (Llama-3.1-8B FP8, 64 slots, as config.l4.yaml).
Both runs use the same simulator, scheduler, policy (SJF), bounds, delays and replica start-up time
(``--startup-s``: a new replica costs from the moment it is asked for, and serves only after it):

* **queue-aware**: `QueueAwareScaler` on the `Backlog` the simulator's meter publishes, as the Serve
  policy (deployments/autoscaling.py) does on the scheduler actor's;
* **slot-based**: Ray Serve's default policy: ``ceil(ongoing / target_ongoing_requests)`` with the
  requests running on the replicas averaged over ``look_back_period_s`` (30 s), and Serve's delay rule
  (no hysteresis). Its target is swept (``--slot-targets``; 48 of 64 slots was k8s/render.py's).

Each policy is swept, since "fewer replica-seconds" only means something at the same latency: the
last lines name, for each slot-based setting, the cheapest queue-aware setting whose p99 is the same
or better for every tenant. The queue-aware sweep (``--queue-settings``) spans its knobs, labelled by
their initials: ``u`` target_utilization (headroom on the way up: paid in bursts too), ``h`` hysteresis
(headroom on the way down: after a burst the pool stops at ``raw / (1 - h)``, so it is paid in the
quiet spells, and it is what the next burst finds standing while new replicas start), ``w``
rate_window_s, ``d`` drain_s and ``b`` min_budget_s (default: the start-up time). A long ``w`` and ``d``
absorb a burst in the queue instead of keeping up with it: fewer replicas, each busy longer, longer
waits; ``b`` goes with ``d`` there, since the SLO term's floor would otherwise drain every tier's work
within ``b`` whatever ``d`` says.

Printed: replica-seconds (start-up included), mean replicas, scale events, and per-tenant p99
end-to-end latency (and requests that expired in the queue) side by side. A p99 here hinges on a few
batches at burst starts, so every setting runs on the traces of ``--seeds`` seeds (``--seed`` onward,
each its own arrivals and prior) and the table and verdicts are the medians over seeds, each column
on its own; a line per slot target then says on how many seeds, taken alone, some queue-aware
setting had fewer replica-seconds and the same or better p99 for every tenant. ``--seeds 1`` is a
single trace. ``--jobs 2`` runs the simulations in two worker processes.

    python benchmarks/bench_autoscale.py [--requests 20000] [--seed 0] [--seeds 3] [--jobs 1]
"""

from __future__ import annotations

import argparse
import functools
import math
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from driftsched.core.autoscale import AutoscaleConfig, QueueAwareScaler
from driftsched.sim.perf_model import MODEL_SHAPES, PerfModel
from driftsched.sim.simulator import Simulation, core_config_for
from driftsched.sim.workload import Workload, WorkloadItem, measured_capacity_rps, paper_workload

SLOTS = 64
LOOK_BACK_S = 30.0
TICK_S = 1.0  # both policies decide once a simulated second (Serve's loop is 0.1 s; reads are 1 s)
SLO_S = {"support-bot": 30.0, "code-assist": 90.0, "docs-pipeline": 90.0, "content-studio": 180.0}


def bursty(
    items: list[WorkloadItem], quiet_s: float, burst_s: float, quiet: float, burst: float
) -> list[WorkloadItem]:
    """Re-time `items` (generated at load 1.0) into phases: quiet_s at `quiet` x, burst_s at `burst` x."""
    out, t, last = [], 0.0, items[0].arrival_s
    period = quiet_s + burst_s
    for it in items:
        gap = it.arrival_s - last
        last = it.arrival_s
        factor = quiet if (t % period) < quiet_s else burst
        t += gap / factor
        out.append(replace(it, arrival_s=t))
    return out


class SlotPolicy:
    """Ray Serve's default autoscaling policy on running requests (see module docstring)."""

    def __init__(self, config: AutoscaleConfig, target_ongoing: int) -> None:
        self.config, self.target_ongoing = config, target_ongoing
        self._samples: deque[tuple[float, int]] = deque()
        self._since: float | None = None
        self._direction = 0

    def decide(self, now: float, running: int, target: int) -> int:
        cfg = self.config
        self._samples.append((now, running))
        while self._samples[0][0] < now - LOOK_BACK_S:
            self._samples.popleft()
        ongoing = sum(n for _, n in self._samples) / len(self._samples)
        desired = min(max(math.ceil(ongoing / self.target_ongoing), cfg.min_replicas), cfg.max_replicas)
        direction = (desired > target) - (desired < target)
        if direction == 0:
            self._since, self._direction = None, 0
            return target
        if direction != self._direction or self._since is None:
            self._since, self._direction = now, direction
        delay = cfg.upscale_delay_s if direction > 0 else cfg.downscale_delay_s
        if now - self._since >= delay:
            self._since, self._direction = None, 0
            return desired
        return target


class Pool:
    """Drives a simulation's replicas toward a target, with start-up time; counts what they cost."""

    def __init__(self, sim: Simulation, startup_s: float) -> None:
        self.sim, self.startup_s = sim, startup_s
        self.starting: list[float] = []  # request times of replicas still starting
        self.asked = {r: 0.0 for r in range(len(sim.engines))}  # replica -> when it was asked for
        self.events = 0
        self.cancelled = 0.0

    @property
    def size(self) -> int:
        return len(self.sim.active_replicas) + len(self.starting)

    def resize(self, target: int) -> None:
        now = self.sim.clock.now
        if target != self.size:
            self.events += 1
        while self.size < target:
            self.starting.append(now)
            self.sim.at(now + self.startup_s, self._started)
        while self.size > target and self.starting:
            self.cancelled += now - self.starting.pop()  # not started yet: what it cost so far
        while self.size > target:  # the least busy replica goes (it drains soonest)
            engines = self.sim.engines
            least = min(self.sim.active_replicas, key=lambda r: (len(engines[r].running), -r))
            self.sim.retire_replica(least)

    def _started(self) -> None:
        if self.starting:
            self.asked[len(self.sim.engines)] = self.starting.pop(0)
            self.sim.add_replica()

    def replica_seconds(self, end: float) -> float:
        sim = self.sim
        return self.cancelled + sum((sim.drained_at[r] or end) - asked for r, asked in self.asked.items())


@dataclass(slots=True)
class Outcome:
    """One run: its label, cost and per-tenant p99 end-to-end latency."""

    label: str
    replica_s: float
    mean_replicas: float
    events: float  # a count, or a median of counts
    p99: dict[str, float]
    expired: float  # likewise
    service_tokens_per_s: float | None


SETTING_KEYS = {"u": "target_utilization", "h": "hysteresis", "w": "rate_window_s", "d": "drain_s",
                "b": "min_budget_s"}


def parse_settings(text: str) -> list[tuple[str, dict[str, float]]]:
    """``"u=0.7; u=1.0,h=0.5"`` -> [(label, AutoscaleConfig fields)], one per ``;``-separated setting."""
    out = []
    for setting in filter(None, (part.strip() for part in text.split(";"))):
        fields, label = {}, []
        for pair in setting.split(","):
            key, _, value = pair.strip().partition("=")
            if key not in SETTING_KEYS:
                raise SystemExit(f"unknown key {key!r} in {setting!r}; use {', '.join(SETTING_KEYS)}")
            fields[SETTING_KEYS[key]] = float(value)
            label.append(f"{key}{value}")
        out.append(("queue " + " ".join(label), fields))
    return out


def run(workload: Workload, perf: PerfModel, config: AutoscaleConfig, slot_target: int | None,
        startup_s: float, label: str) -> Outcome:
    """One simulated run under the queue-aware scaler (`slot_target` None) or the slot-based policy."""
    core = core_config_for(workload, perf)
    data = core.model_dump()
    for tenant in data["tenants"]:
        tenant["latency_slo_s"] = SLO_S.get(tenant["name"])
    core = type(core).model_validate(data)
    sim = Simulation(workload, "sjf", perf, config.min_replicas, core)
    pool = Pool(sim, startup_s)
    scaler = QueueAwareScaler(config)
    slots = SlotPolicy(config, slot_target or 1)

    def tick() -> None:
        now = sim.clock.now
        if slot_target is None:
            target = scaler.decide(now, sim.backlog(config.rate_window_s), pool.size).replicas
        else:
            target = slots.decide(now, sim.scheduler.num_in_flight, pool.size)
        pool.resize(target)
        sim.at(now + TICK_S, tick)

    sim.at(0.0, tick)
    result = sim.run()
    e2e = result.finish - np.array([it.arrival_s for it in workload.items])
    tenants = np.array([it.tenant for it in workload.items])
    p99 = {t.name: float(np.nanpercentile(e2e[tenants == t.name], 99)) for t in workload.tenants}
    cost = pool.replica_seconds(result.sim_time_s)
    return Outcome(label, cost, cost / result.sim_time_s, pool.events, p99, int(result.expired.sum()),
                   sim.scheduler.risk.rate.per_replica())


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """What a seed's trace and base AutoscaleConfig are built from (hashable: one build per process)."""

    requests: int
    base_replicas: int
    quiet_load: float
    burst_load: float
    quiet_s: float
    burst_s: float
    startup_s: float
    max_replicas: int
    rate_window_s: float


@functools.lru_cache(maxsize=4)
def build(spec: TraceSpec, seed: int) -> tuple[Workload, PerfModel, AutoscaleConfig, float]:
    """Seed `seed`'s bursty workload, the perf model, the base config and its prior (tokens/s)."""
    perf = PerfModel(MODEL_SHAPES["llama-3.1-8b-fp8"], max_num_seqs=SLOTS, max_num_batched_tokens=4096)
    base = paper_workload(spec.requests, seed=seed, replicas=spec.base_replicas, load=1.0, perf=perf)
    items = bursty(base.items, spec.quiet_s, spec.burst_s, spec.quiet_load, spec.burst_load)
    workload = Workload("bursty", items, base.tenants, block_tokens=base.block_tokens)
    # The prior an operator would configure: one replica's measured throughput on this model and mix
    # (bench_vllm on real L4s; here the simulated engine's).
    prior = measured_capacity_rps(perf, items) * sum(it.output_tokens for it in items) / len(items)
    config = AutoscaleConfig(enabled=True, min_replicas=1, max_replicas=spec.max_replicas,
                             upscale_delay_s=10.0, downscale_delay_s=120.0, prior_tokens_per_s=prior,
                             min_budget_s=spec.startup_s, rate_window_s=spec.rate_window_s)
    return workload, perf, config, prior


@dataclass(frozen=True, slots=True)
class Job:
    """One simulated run: a seed's trace under a slot target, or under queue-aware `fields`."""

    spec: TraceSpec
    seed: int
    label: str
    slot_target: int | None
    fields: tuple[tuple[str, float], ...] = ()


def run_job(job: Job) -> Outcome:
    workload, perf, config, _ = build(job.spec, job.seed)
    if job.slot_target is None:
        config = AutoscaleConfig.model_validate({**config.model_dump(), **dict(job.fields)})
    return run(workload, perf, config, job.slot_target, job.spec.startup_s, job.label)


def median(runs: list[Outcome]) -> Outcome:
    """The per-column median of one setting's runs over seeds (each column on its own)."""
    rates = [o.service_tokens_per_s for o in runs if o.service_tokens_per_s is not None]
    def mid(values: list[float]) -> float:
        return float(np.median(values))

    return Outcome(runs[0].label, mid([o.replica_s for o in runs]), mid([o.mean_replicas for o in runs]),
                   mid([o.events for o in runs]), {t: mid([o.p99[t] for o in runs]) for t in runs[0].p99},
                   mid([o.expired for o in runs]), mid(rates) if rates else None)


def dominating(slot: Outcome, queue_runs: list[Outcome]) -> Outcome | None:
    """The cheapest queue-aware run with fewer replica-seconds and every tenant's p99 <= `slot`'s."""
    better = [q for q in queue_runs
              if q.replica_s < slot.replica_s and all(q.p99[t] <= p for t, p in slot.p99.items())]
    return min(better, key=lambda q: q.replica_s, default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=3, help="seeds --seed..--seed+N-1; medians over them")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the simulations")
    parser.add_argument("--base-replicas", type=int, default=4, help="capacity unit of the loads")
    parser.add_argument("--quiet-load", type=float, default=0.3)
    parser.add_argument("--burst-load", type=float, default=1.6)
    parser.add_argument("--quiet-s", type=float, default=600.0)
    parser.add_argument("--burst-s", type=float, default=180.0)
    parser.add_argument("--startup-s", type=float, default=60.0, help="replica start-up time")
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument("--rate-window-s", type=float, default=10.0, help="queue-aware: rate_window_s")
    parser.add_argument("--slot-targets", default="48,32,24,16",
                        help="slot-based: target_ongoing_requests per replica (of 64 slots)")
    parser.add_argument("--queue-settings",
                        default="u=0.7; u=0.8; u=1.0; u=1.0,h=0.5,w=30,d=60; u=1.0,h=0.5,w=30,d=120,b=120; "
                                "u=1.0,w=120,d=120,b=120; u=1.0,w=300,d=240,b=240",
                        help="queue-aware settings: ';'-separated, each ','-separated key=value with keys "
                             "u (target_utilization), h (hysteresis), w (rate_window_s), d (drain_s), "
                             "b (min_budget_s); unset keys keep the defaults printed above")
    args = parser.parse_args()

    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    spec = TraceSpec(args.requests, args.base_replicas, args.quiet_load, args.burst_load, args.quiet_s,
                     args.burst_s, args.startup_s, args.max_replicas, args.rate_window_s)
    seeds = list(range(args.seed, args.seed + args.seeds))
    built = [build(spec, seed) for seed in seeds]
    workload, _, config, _ = built[0]
    spans = " / ".join(f"{w.items[-1].arrival_s:,.0f}" for w, *_ in built)
    priors = " / ".join(f"{prior:,.0f}" for *_, prior in built)
    of_seeds = "" if len(seeds) == 1 else f" (seeds {seeds[0]}..{seeds[-1]})"
    print(f"bursty trace{of_seeds}: {len(workload.items)} requests over {spans} s; {args.quiet_s:g} s at "
          f"{args.quiet_load:g}x and {args.burst_s:g} s at {args.burst_load:g}x the capacity of "
          f"{args.base_replicas} L4 replicas")
    print(f"start-up {args.startup_s:g} s; 1..{args.max_replicas} replicas; delays up "
          f"{config.upscale_delay_s:g} s / down {config.downscale_delay_s:g} s; prior {priors} tokens/s")
    print(f"queue-aware defaults: u{config.target_utilization:g} h{config.hysteresis:g} "
          f"w{config.rate_window_s:g} d{config.drain_s:g} b{config.min_budget_s:g}")
    settings: list[tuple[str, int | None, tuple[tuple[str, float], ...]]]
    settings = [(f"slot target {t}", int(t), ()) for t in args.slot_targets.split(",")]
    n_slot = len(settings)
    settings += [(label, None, tuple(f.items())) for label, f in parse_settings(args.queue_settings)]
    jobs = [Job(spec, seed, label, target, fields) for seed in seeds for label, target, fields in settings]
    if args.jobs > 1:
        with ProcessPoolExecutor(min(args.jobs, len(jobs))) as executor:
            outcomes = list(executor.map(run_job, jobs))
    else:
        outcomes = [run_job(job) for job in jobs]
    per_seed = [outcomes[i:i + len(settings)] for i in range(0, len(outcomes), len(settings))]
    medians = [median([runs[k] for runs in per_seed]) for k in range(len(settings))]
    slot_runs, queue_runs = medians[:n_slot], medians[n_slot:]
    tenants = [t.name for t in workload.tenants]
    header = f"{'policy':<30}{'replica-s':>11}{'mean':>7}{'events':>7}" + "".join(
        f"{'p99 ' + t:>20}" for t in tenants) + f"{'expired':>9}"
    if len(seeds) > 1:
        print(f"median over seeds {seeds[0]}..{seeds[-1]}, each column on its own:")
    print(header)
    print("-" * len(header))
    for o in slot_runs + queue_runs:
        print(f"{o.label:<30}{o.replica_s:>11,.0f}{o.mean_replicas:>7.2f}{o.events:>7g}"
              + "".join(f"{o.p99[t]:>19.1f}s" for t in tenants) + f"{o.expired:>9g}")
    for slot in slot_runs:
        better = [q for q in queue_runs if all(q.p99[t] <= slot.p99[t] for t in tenants)]
        if not better:
            print(f"{slot.label}: no queue-aware setting matches its p99 for every tenant")
            continue
        best = min(better, key=lambda q: q.replica_s)
        saving = 100 * (1 - best.replica_s / slot.replica_s)
        print(f"{slot.label}: {best.label} has the same or better p99 for every tenant with "
              f"{abs(saving):.0f}% {'fewer' if saving >= 0 else 'more'} replica-seconds")
    if len(seeds) > 1:
        print("per seed, the cheapest queue-aware setting with fewer replica-seconds and the same or better "
              "p99 for every tenant:")
        for k, slot in enumerate(slot_runs):
            found = [(seed, runs[k], dominating(runs[k], runs[n_slot:]))
                     for seed, runs in zip(seeds, per_seed, strict=True)]
            wins = sum(q is not None for *_, q in found)
            print(f"  {slot.label}: {wins} of {len(seeds)} seeds (" + "; ".join(
                f"{seed}: " + ("none" if q is None else f"{q.label.removeprefix('queue ')} "
                                                        f"-{100 * (1 - q.replica_s / o.replica_s):.0f}%")
                for seed, o, q in found) + ")")
    rates = [o.service_tokens_per_s for runs in per_seed for o in runs[n_slot:]]
    measured = [rate for rate in rates if rate is not None] or [math.nan]
    print(f"queue-aware measured service rate: {min(measured):,.0f}..{max(measured):,.0f} output tokens/s "
          "per replica")


if __name__ == "__main__":
    main()
