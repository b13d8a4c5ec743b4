"""Prometheus exposition of the scheduler's snapshot, the request book and the drift statistics.

Everything application-wide comes from the scheduler actor's `SchedulerView` (queue depths, counters,
latency histograms, replica capacity) and from the ingress's copy of the shared drift statistics, so
any ingress replica answers /metrics with the same numbers. Only `driftsched_ingress_rejected_total`
(requests refused before reaching the scheduler: bad body, bad key) is per ingress replica.
Labels are bounded: tenant, reason, category, estimate kind, replica, outcome, objective — never a
request id.

Latency objectives (`deployments.telemetry.judge` says what meeting one means): per tenant, the
requests judged (refusals that count as misses included, `shed_count`), those that met TTFT, TPOT and
both, and the output tokens of those that met both (goodput); attainment is a ratio of two rates, e.g.
``rate(driftsched_slo_met_requests_total{objective="both"}[5m]) /
rate(driftsched_slo_judged_requests_total[5m])``. The objectives themselves are gauges from the config.

Prefix cache: per (replica, tenant), the prompt tokens of completed requests and those their engine
found cached (`deployments.telemetry.PrefixTally`), so the hit rate placement earns is a ratio of
rates per tenant or per replica; and per replica the engine's own counters (`PrefixCacheCounters`:
every lookup, a preempted sequence's again, as vLLM counts them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from deployments.scheduler_actor import SchedulerView, ShownDecision
from deployments.telemetry import LATENCY_BUCKETS_S, SloTally, shed_count
from driftsched.core.accuracy import DriftStat
from driftsched.core.slo import Objectives

_HISTOGRAMS = {
    "queue_wait": ("driftsched_queue_wait_seconds", "Time from arrival to a replica grant."),
    "ttft": ("driftsched_ttft_seconds", "Time from arrival to the first token."),
    "e2e": ("driftsched_e2e_latency_seconds", "Time from arrival to the last token."),
    "engine_queue": ("driftsched_engine_queue_seconds",
                     "Time queued inside the engine (vLLM) before first being scheduled."),
    "engine_ttft": ("driftsched_engine_ttft_seconds", "First-token latency measured by the engine."),
}
_ENGINE_GAUGES = (
    ("engine_running", "driftsched_replica_engine_running_requests", "Sequences running in the engine."),
    ("engine_waiting", "driftsched_replica_engine_waiting_requests", "Sequences waiting inside the engine."),
    ("kv_usage", "driftsched_replica_kv_cache_usage_ratio", "Fraction of the engine's KV cache in use."),
    ("engine_queue_s", "driftsched_replica_engine_queue_seconds",
     "Recent mean time requests waited inside the engine."),
    ("step_s", "driftsched_replica_step_seconds",
     "Decode pace measured from the replica's progress reports: seconds per step (0 until measured)."),
    ("kv_share", "driftsched_replica_tpot_guard_kv_share",
     "Share of the replica's KV the TPOT guard lets new grants fill (1: all of it)."),
)


class _Snapshot:
    """A one-shot collector over the data of one scrape."""

    def __init__(self, view: SchedulerView | None, drift: list[DriftStat],
                 ingress_rejected: Mapping[str, int], objectives: Mapping[str, Objectives]) -> None:
        self.view, self.drift, self.ingress_rejected = view, drift, ingress_rejected
        self.objectives = objectives

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("driftsched_scheduler_up", "1 if the scheduler actor answered this scrape.")
        up.add_metric([], 1.0 if self.view is not None else 0.0)
        yield up
        rejected = CounterMetricFamily("driftsched_ingress_rejected",
                                       "Requests refused by this ingress replica before scheduling.",
                                       labels=["reason"])
        for reason, n in sorted(self.ingress_rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        objective = GaugeMetricFamily("driftsched_slo_objective_seconds",
                                      "Each tenant's latency objectives (its own, or its tier's).",
                                      labels=["tenant", "objective"])
        for tenant, target in sorted(self.objectives.items()):
            objective.add_metric([tenant, "ttft"], target.ttft_s)
            objective.add_metric([tenant, "tpot"], target.tpot_s)
            if target.e2e_s is not None:
                objective.add_metric([tenant, "e2e"], target.e2e_s)
        yield objective
        if self.view is not None:
            yield from self._scheduler(self.view)
            yield from _slo(self.view)
            yield from _prefix_cache(self.view)
        yield from self._drift(self.drift)

    def _scheduler(self, view: SchedulerView) -> Iterator[Metric]:
        stats = view.stats
        policy = GaugeMetricFamily("driftsched_policy_info", "The active policy.", labels=["policy"])
        policy.add_metric([stats.policy], 1.0)
        yield policy
        for name, doc, values in (
            ("driftsched_queue_depth_requests", "Requests waiting per tenant.", stats.queued),
            ("driftsched_in_flight_requests", "Requests running per tenant.", stats.in_flight),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["tenant"])
            for tenant, n in sorted(values.items()):
                gauge.add_metric([tenant], n)
            yield gauge
        for field in ("admitted", "dispatched", "completed", "cancelled", "expired", "preempted", "revoked"):
            counter = CounterMetricFamily(f"driftsched_requests_{field}", f"Requests {field}.",
                                          labels=["tenant"])
            for tenant, c in sorted(stats.counters.items()):
                counter.add_metric([tenant], getattr(c, field))
            yield counter
        rej = CounterMetricFamily("driftsched_requests_rejected", "Requests refused by admission.",
                                  labels=["tenant", "reason"])
        for tenant, c in sorted(stats.counters.items()):
            for reason, n in sorted(c.rejected.items()):
                rej.add_metric([tenant, reason], n)
        yield rej
        tokens = CounterMetricFamily("driftsched_generated_tokens", "Output tokens generated.",
                                     labels=["tenant"])
        for tenant, n in sorted(view.tokens.items()):
            tokens.add_metric([tenant], n)
        yield tokens
        outcomes = CounterMetricFamily("driftsched_request_outcomes", "Granted requests by how they ended.",
                                       labels=["tenant", "outcome"])
        for (tenant, outcome), n in sorted(view.outcomes.items()):
            outcomes.add_metric([tenant, outcome], n)
        yield outcomes
        for kind, (name, doc) in _HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=["tenant"])
            for (k, tenant), hist in sorted(view.histograms.items()):
                if k != kind:
                    continue
                cumulative, buckets = 0, []
                for le, count in zip((*LATENCY_BUCKETS_S, float("inf")), hist.counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if le == float("inf") else repr(le), cumulative))
                family.add_metric([tenant], buckets, hist.total)
            yield family
        slots = GaugeMetricFamily("driftsched_replica_slots", "Engine slots per replica.",
                                  labels=["replica"])
        used = GaugeMetricFamily("driftsched_replica_slots_in_use", "Engine slots granted or running.",
                                 labels=["replica"])
        for replica, summary in sorted(view.replicas.items()):
            slots.add_metric([replica], summary["slots"])
            used.add_metric([replica], summary["in_use"])
        yield slots
        yield used
        for key, name, doc in _ENGINE_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["replica"])
            for replica, summary in sorted(view.replicas.items()):
                gauge.add_metric([replica], float(summary.get(key, 0.0)))
            yield gauge
        if view.autoscale is not None:
            yield from _autoscale(view.autoscale)

    def _drift(self, rows: list[DriftStat]) -> Iterator[Metric]:
        mae = GaugeMetricFamily("driftsched_estimate_mae_tokens",
                                "Mean absolute error of output-token estimates.",
                                labels=["tenant", "category", "estimate"])
        rmse = GaugeMetricFamily("driftsched_estimate_rmse_tokens",
                                 "Root mean squared error of output-token estimates.",
                                 labels=["tenant", "category", "estimate"])
        factor = GaugeMetricFamily("driftsched_estimate_correction_factor",
                                   "Current drift correction factor.", labels=["tenant", "category"])
        count = GaugeMetricFamily("driftsched_estimate_observations",
                                  "Finished requests observed (decay-free count).",
                                  labels=["tenant", "category"])
        for row in rows:
            for kind, m, r in (("raw", row.mae_raw, row.rmse_raw),
                               ("corrected", row.mae_corrected, row.rmse_corrected)):
                mae.add_metric([row.tenant, row.category, kind], m)
                rmse.add_metric([row.tenant, row.category, kind], r)
            factor.add_metric([row.tenant, row.category], row.factor)
            count.add_metric([row.tenant, row.category], row.count)
        yield from (mae, rmse, factor, count)


def _slo(view: SchedulerView) -> Iterator[Metric]:
    """Requests judged against their objectives, those that met each, and goodput tokens, per tenant."""
    # The request book's tallies: `SchedulerView.slo` (deployments/scheduler_actor.py); an actor that
    # does not send them yet shows every tenant's refusals only.
    tallies: Mapping[str, SloTally] = getattr(view, "slo", None) or {}
    judged = CounterMetricFamily(
        "driftsched_slo_judged_requests",
        "Requests judged against their latency objectives: ended after admission (not abandoned by "
        "their client), or refused for a reason other than the tenant's own limits.", labels=["tenant"])
    met = CounterMetricFamily("driftsched_slo_met_requests",
                              "Judged requests that met the objective (ttft, tpot, or both).",
                              labels=["tenant", "objective"])
    good = CounterMetricFamily("driftsched_goodput_tokens",
                               "Output tokens of requests that met both objectives.", labels=["tenant"])
    for tenant in sorted(set(view.stats.counters) | set(tallies)):
        tally = tallies.get(tenant) or SloTally()
        counters = view.stats.counters.get(tenant)
        shed = shed_count(counters.rejected) if counters is not None else 0
        judged.add_metric([tenant], tally.judged + shed)
        for name, n in (("ttft", tally.ttft), ("tpot", tally.tpot), ("both", tally.both)):
            met.add_metric([tenant, name], n)
        good.add_metric([tenant], tally.good_tokens)
    yield from (judged, met, good)


def _prefix_cache(view: SchedulerView) -> Iterator[Metric]:
    """Prompt tokens looked up in and found in the engines' prefix caches (module docstring)."""
    query = CounterMetricFamily(
        "driftsched_prefix_cache_query_tokens",
        "Prompt tokens of completed requests whose engine reports its prefix cache, by the replica "
        "that finished them.", labels=["replica", "tenant"])
    hit = CounterMetricFamily("driftsched_prefix_cache_hit_tokens",
                              "Of those prompt tokens, the ones the engine found in its prefix cache.",
                              labels=["replica", "tenant"])
    for (replica, tenant), tally in sorted(getattr(view, "prefix", {}).items()):
        query.add_metric([replica, tenant], tally.query_tokens)
        hit.add_metric([replica, tenant], tally.hit_tokens)
    engine_query = CounterMetricFamily(
        "driftsched_replica_prefix_cache_query_tokens",
        "Prompt tokens the engine looked up in its prefix cache (a preempted sequence's again).",
        labels=["replica"])
    engine_hit = CounterMetricFamily("driftsched_replica_prefix_cache_hit_tokens",
                                     "Prompt tokens the engine found in its prefix cache.",
                                     labels=["replica"])
    for replica, counters in sorted(getattr(view, "engine_prefix", {}).items()):
        engine_query.add_metric([replica], counters.query_tokens)
        engine_hit.add_metric([replica], counters.hit_tokens)
    yield from (query, hit, engine_query, engine_hit)


def _autoscale(decision: ShownDecision) -> Iterator[Metric]:
    """The queue-aware autoscaling policy's last decision (deployments/autoscaling.py)."""
    target = GaugeMetricFamily("driftsched_autoscale_target_replicas",
                               "LLM replicas the autoscaling policy set (after its delays).")
    target.add_metric([], decision["replicas"])
    desired = GaugeMetricFamily(
        "driftsched_autoscale_desired_replicas",
        "LLM replicas the backlog needs now (before delays), by the term that set it "
        "(steady, backlog, slo:<tier>, idle, hold).", labels=["reason"])
    desired.add_metric([decision["reason"]], decision["desired"])
    yield target
    yield desired


def render(view: SchedulerView | None, drift: list[DriftStat], ingress_rejected: Mapping[str, int],
           objectives: Mapping[str, Objectives] | None = None) -> bytes:
    """Prometheus text exposition of one scrape (`objectives`: each tenant's, from the config)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(view, drift, ingress_rejected, objectives or {}))
    return generate_latest(registry)
