"""Per-request records of one run, simulated or live: the single input of every report.

`driftsched simulate` turns a `RunResult` into records with `from_simulation`; the live load generator
builds them from what it saw over HTTP. Times are seconds on the run's own axis (modelled seconds for
both: a live run divides wall time by its time scale). NaN marks what a request never reached or what a
source cannot know (a live client sees no dispatch time and no raw estimate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftsched.sim.simulator import RunResult


@dataclass(slots=True)
class RunRecords:
    """One run of one policy: a row per request, plus run facts that go into its summary verbatim."""

    policy: str
    tenant: np.ndarray  # str
    category: list[str]
    prompt_tokens: np.ndarray
    max_tokens: np.ndarray
    output_tokens: np.ndarray  # true (simulated) or observed (live, NaN unless finished)
    arrival: np.ndarray
    dispatch: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    raw_estimate: np.ndarray
    corrected_estimate: np.ndarray
    admitted: np.ndarray  # bool
    status: list[str]  # "completed", a rejection reason, or an error
    extras: dict[str, Any] = field(default_factory=dict)
    """Facts appended to this policy's summary as they are (e.g. preemptions, wall time)."""
    estimator: dict[str, dict[str, float]] | None = None
    """Estimation errors as the service reported them; None: computed from the rows."""
    ttft_slo_s: np.ndarray | None = None
    """Each request's own TTFT objective (s), where it asked for a stricter one than its tenant's;
    NaN (or no array): its tenant's. Reports judge against it (`driftsched.sim.attainment`)."""
    tpot_slo_s: np.ndarray | None = None
    """Each request's own TPOT objective (s), as `ttft_slo_s`."""
    cached_tokens: np.ndarray | None = None
    """Prompt tokens each request found in its replica's prefix cache (NaN: unknown or never started)."""
    replica: np.ndarray | None = None
    """Index of the replica each request ran on (-1: none or unknown)."""

    def __len__(self) -> int:
        return len(self.status)

    def select(self, mask: np.ndarray) -> RunRecords:
        """The rows where `mask` holds, with the same run facts (`extras`, `estimator`)."""
        idx = np.flatnonzero(mask)
        arrays = {name: getattr(self, name)[idx] for name in _ROW_ARRAYS}
        return RunRecords(
            policy=self.policy,
            category=[self.category[i] for i in idx],
            status=[self.status[i] for i in idx],
            extras=dict(self.extras),
            estimator=self.estimator,
            ttft_slo_s=None if self.ttft_slo_s is None else self.ttft_slo_s[idx],
            tpot_slo_s=None if self.tpot_slo_s is None else self.tpot_slo_s[idx],
            cached_tokens=None if self.cached_tokens is None else self.cached_tokens[idx],
            replica=None if self.replica is None else self.replica[idx],
            **arrays,
        )


_ROW_ARRAYS = (
    "tenant", "prompt_tokens", "max_tokens", "output_tokens", "arrival", "dispatch", "first_token", "finish",
    "raw_estimate", "corrected_estimate", "admitted",
)


def concat(parts: list[RunRecords], policy: str | None = None) -> RunRecords:
    """The rows of several runs of one policy as one (e.g. the steady windows of several seeds, for
    percentiles over all their requests); run facts are the first part's. Times stay on each part's
    own axis, so only figures that do not span requests (latencies, attainment) mean anything."""
    if not parts:
        raise ValueError("concat needs at least one RunRecords")
    arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _ROW_ARRAYS}

    def own(values: list[np.ndarray | None], missing: float = np.nan) -> np.ndarray | None:
        if all(v is None for v in values):
            return None
        filled = [np.full(len(p), missing) if v is None else v for p, v in zip(parts, values, strict=True)]
        joined: np.ndarray = np.concatenate(filled)
        return joined

    first = parts[0]
    return RunRecords(
        policy=policy or first.policy,
        category=[c for p in parts for c in p.category],
        status=[s for p in parts for s in p.status],
        extras=dict(first.extras),
        estimator=first.estimator,
        ttft_slo_s=own([p.ttft_slo_s for p in parts]),
        tpot_slo_s=own([p.tpot_slo_s for p in parts]),
        cached_tokens=own([p.cached_tokens for p in parts]),
        replica=own([p.replica for p in parts], -1),
        **arrays,
    )


def from_simulation(run: RunResult) -> RunRecords:
    """The records of a simulated run; the true output lengths are read here, after the run."""
    items = run.items
    n = len(items)
    done = ~np.isnan(run.finish)
    status = [
        "completed" if done[i] else ("expired" if run.expired[i] else (run.reject_reason[i] or "unfinished"))
        for i in range(n)
    ]
    return RunRecords(
        policy=run.policy,
        tenant=np.array([it.tenant for it in items]),
        category=[run.category[i] or it.category for i, it in enumerate(items)],
        prompt_tokens=np.fromiter((it.prompt_tokens for it in items), float, n),
        max_tokens=np.fromiter((it.max_tokens for it in items), float, n),
        output_tokens=np.fromiter((it.output_tokens for it in items), float, n),
        arrival=np.fromiter((it.arrival_s for it in items), float, n),
        dispatch=run.dispatch,
        first_token=run.first_token,
        finish=run.finish,
        raw_estimate=run.raw_estimate,
        corrected_estimate=run.corrected_estimate,
        admitted=run.admitted,
        status=status,
        extras={
            "preemptions": run.num_preemptions,
            "simulated_s": run.sim_time_s,
            "utilisation": sum(run.busy_s) / (len(run.busy_s) * run.sim_time_s) if run.sim_time_s else 0.0,
            "output_tokens_per_s": run.generated_tokens / run.sim_time_s if run.sim_time_s else 0.0,
            "prefix_cache": prefix_cache(run.prefix_query_tokens, run.prefix_hit_tokens),
            "replica_share": replica_share(run.replica_work_tokens),
        },
        cached_tokens=run.cached_tokens,
        replica=run.replica,
    )


def prefix_cache(query_tokens: int, hit_tokens: int) -> dict[str, float]:
    """The engines' prefix-cache figures of a run: hit rate (hit / query tokens, vLLM's ratio) and the
    prompt tokens served from the cache; the rate is NaN where nothing was queried (caching off)."""
    return {
        "hit_rate": hit_tokens / query_tokens if query_tokens else float("nan"),
        "cached_prompt_tokens": float(hit_tokens),
        "query_tokens": float(query_tokens),
    }


def replica_share(work: tuple[int, ...] | list[int]) -> dict[str, float]:
    """How evenly the replicas shared the work (tokens each computed): the largest over the mean (1 is
    even; a hot prefix piled on one replica of N reads up to N)."""
    mean = sum(work) / len(work) if work else 0.0
    return {"max_over_mean": max(work) / mean if mean > 0 else float("nan")}


def as_records(run: RunResult | RunRecords) -> RunRecords:
    return run if isinstance(run, RunRecords) else from_simulation(run)
