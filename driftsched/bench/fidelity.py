"""Simulator fidelity: the discrete-event simulator on exactly what a live run sent, side by side.

The simulated run gets the live run's items with what the service saw of them (`prompts.intake_fields`:
the synthesised prompt and its token count, the declared category, ``max_tokens``), the same tenants and
core config (in workload seconds), the same replica count and performance model
(`deployments.replica_config.perf_model_for`, what the simulated replicas run). Differences that remain
are the live path's own: HTTP and actor overheads, real-time pacing of the engine steps, heartbeats.

Besides latencies it reports the **category match**: among the requests both runs admitted, the share
whose live category (the service's ``x-driftsched-category``) equals the simulated one. Both intakes
get identical inputs, so anything below 1 means the two sides classify differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from driftsched.bench.prompts import intake_fields
from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S, CoreConfig
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.records import RunRecords, from_simulation
from driftsched.sim.simulator import Simulation
from driftsched.sim.workload import Workload

_FIGURES = (("e2e_s", "p50"), ("e2e_s", "p99"), ("ttft_s", "p50"))


def as_sent(workload: Workload) -> Workload:
    """The workload as the service sees it: each item reduced to its `intake_fields` (true length kept)."""
    items = []
    for it in workload.items:
        f = intake_fields(it, workload.block_tokens)
        items.append(replace(it, category=f.category or "", prompt_text=f.prompt_text,
                             prompt_tokens=f.prompt_tokens, max_tokens=f.max_tokens))
    return Workload(workload.name, items, workload.tenants, block_tokens=workload.block_tokens)


def simulate(
    workload: Workload,
    policies: Sequence[str],
    perf: PerfModel,
    replicas: int,
    config: CoreConfig,
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
) -> list[RunRecords]:
    """Each policy on the as-sent workload in the simulator, with the live run's queue deadline."""
    sent = as_sent(workload)
    return [
        from_simulation(Simulation(sent, p, perf, replicas, config, queue_timeout_s=queue_timeout_s).run())
        for p in policies
    ]


def compare(live: Mapping[str, Any], simulated: Mapping[str, Any]) -> dict[str, Any]:
    """Per policy: live and simulated E2E p50/p99 and TTFT p50, and live / simulated ratios."""
    out: dict[str, Any] = {}
    for policy, lv in live.items():
        sv = simulated.get(policy)
        if sv is None:
            continue
        row: dict[str, Any] = {}
        for group, q in _FIGURES:
            a, b = lv[group][q], sv[group][q]
            key = f"{group[:-2]}_{q}"
            row[key] = _pair(a, b)
        # How long the replicas took for the same work: above 1, the live replicas ran slower than modelled.
        row["makespan"] = _pair(lv.get("makespan_s", float("nan")), sv.get("simulated_s", float("nan")))
        out[policy] = row
    return out


def category_match(live: RunRecords, simulated: RunRecords) -> dict[str, float]:
    """Among requests both runs admitted, how many have the same category live and simulated.

    Rows pair by position: a live run's rows are the items it sent, in workload order (a prefix of the
    items), a simulated run's are all items. Returns ``compared`` (admitted by both), ``matched`` and
    ``share`` (matched / compared; NaN when nothing was compared).
    """
    n = len(live)
    if len(simulated) < n:
        raise ValueError(f"the live run has {n} rows, the simulated run only {len(simulated)}")
    rows = zip(live.category, live.admitted, simulated.category[:n], simulated.admitted[:n], strict=True)
    both = [(lc, sc) for lc, la, sc, sa in rows if la and sa]
    matched = sum(lc == sc for lc, sc in both)
    return {"compared": len(both), "matched": matched, "share": matched / len(both) if both else float("nan")}


def _pair(live: float | None, simulated: float | None) -> dict[str, float]:
    live = float("nan") if live is None else live  # null in a summary read back from JSON
    simulated = float("nan") if simulated is None else simulated
    ratio = live / simulated if simulated and live == live else float("nan")
    return {"live": live, "simulated": simulated, "ratio": ratio}


def format_comparison(fidelity: Mapping[str, Any], title: str) -> str:
    """The side-by-side table; the last column is the category match (share, of how many requests)."""
    cols = [f"{g[:-2]}_{q}" for g, q in _FIGURES] + ["makespan"]
    head = f"{'policy':<10}" + "".join(f"{c + ' live':>14}{'sim':>9}{'x':>7}" for c in cols)
    head += f"{'same category':>20}"
    lines = [title, head, "-" * len(head)]
    for policy, row in fidelity.items():
        cells = "".join(
            f"{row[c]['live']:>14.2f}{row[c]['simulated']:>9.2f}{row[c]['ratio']:>7.2f}" for c in cols
        )
        match = row.get("category_match")
        if match is None or match["share"] is None or match["share"] != match["share"]:  # null / NaN
            same = "-"
        else:
            same = f"{match['share']:.1%} of {match['compared']}"
        lines.append(f"{policy:<10}{cells}{same:>20}")
    return "\n".join(lines)
