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

    def __len__(self) -> int:
        return len(self.status)


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
        },
    )


def as_records(run: RunResult | RunRecords) -> RunRecords:
    return run if isinstance(run, RunRecords) else from_simulation(run)
