"""Simulator fidelity: the discrete-event simulator on exactly what a live run sent, side by side.

The simulated run gets the live run's items with what the service saw of them (`prompts.intake_fields`:
the synthesised prompt and its token count, the declared category, ``max_tokens``), the same tenants and
core config (in workload seconds), the same replica count and performance model
(`deployments.replica_config.perf_model_for`, what the simulated replicas run). Differences that remain
are the live path's own: HTTP and actor overheads, real-time pacing of the engine steps, heartbeats.

Besides latencies it reports the **category match**: among the requests both runs admitted, the share
whose live category (the service's ``x-driftsched-category``) equals the simulated one. Both intakes
get identical inputs, so anything below 1 means the two sides classify differently.

The **verdict** judges a run by the two figures that say whether the live system did the modelled
work at the modelled pace and kept the same promises: the makespan (`report.run_span_s` on both sides:
first arrival to last finish) and the overall SLO attainment (``slo.both`` over the steady window, as
`driftsched simulate` reports it). A figure agrees when its ratio live / simulated lies within
1 ± `TOLERANCE`; attainment is compared as that ratio, not in points (the points difference is
reported beside it). The verdict is "met" when both agree, else "missed"; an undefined ratio (a side
with no figure, or a simulated attainment of 0) cannot agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from driftsched.bench.prompts import intake_fields
from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S, CoreConfig
from driftsched.results import markdown_table
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.records import RunRecords, from_simulation
from driftsched.sim.simulator import Simulation
from driftsched.sim.workload import Workload

_FIGURES = (("e2e_s", "p50"), ("e2e_s", "p99"), ("ttft_s", "p50"))
TOLERANCE = 0.10
"""How far live / simulated may stray from 1 for a figure to agree (issue #25: within 10 %)."""
JUDGED = ("makespan", "attainment")
"""The figures a verdict judges (see module docstring)."""


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


def compare(
    live: Mapping[str, Any], simulated: Mapping[str, Any], tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """Per policy: live and simulated E2E p50/p99, TTFT p50, makespan and overall SLO attainment, their
    live / simulated ratios, and the verdict on makespan and attainment (see module docstring)."""
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
        row["makespan"] = _pair(lv.get("span_s"), sv.get("span_s"))
        attainment = _pair((lv.get("slo") or {}).get("both"), (sv.get("slo") or {}).get("both"))
        attainment["points"] = 100 * (attainment["live"] - attainment["simulated"])
        row["attainment"] = attainment
        row["verdict"] = verdict(row, tolerance)
        out[policy] = row
    return out


def agrees(ratio: float, tolerance: float = TOLERANCE) -> bool:
    """Whether a live / simulated ratio lies within 1 ± `tolerance` (NaN never does)."""
    return math.isfinite(ratio) and abs(ratio - 1.0) <= tolerance + 1e-12


def verdict(row: Mapping[str, Any], tolerance: float = TOLERANCE) -> str:
    """"met" when every `JUDGED` figure of a `compare` row agrees, else "missed"."""
    return "met" if all(agrees(row[f]["ratio"], tolerance) for f in JUDGED) else "missed"


def by_seed(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """`compare` rows of several seeds (seed -> policy -> row) regrouped per policy.

    Each policy gets ``seeds`` (per seed: the seed, its `JUDGED` figures and its verdict, in seed
    order), ``met`` (how many seeds met) and ``verdict``: "met" only when every seed met.
    """
    out: dict[str, Any] = {}
    for seed in sorted(per_seed):
        for policy, row in per_seed[seed].items():
            entry = out.setdefault(policy, {"seeds": []})
            entry["seeds"].append({"seed": seed, **{f: row[f] for f in JUDGED}, "verdict": row["verdict"]})
    for entry in out.values():
        entry["met"] = sum(s["verdict"] == "met" for s in entry["seeds"])
        entry["verdict"] = "met" if entry["met"] == len(entry["seeds"]) else "missed"
    return out


def _verdict_rows(seeds: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for policy, entry in seeds.items():
        for s in entry["seeds"]:
            m, a = s["makespan"], s["attainment"]
            rows.append([
                policy, str(s["seed"]), _num(m["live"], 1), _num(m["simulated"], 1), _num(m["ratio"], 3),
                _share(a["live"]), _share(a["simulated"]), _num(a["ratio"], 3), _num(a["points"], 1, "+"),
                s["verdict"],
            ])
    return rows


_VERDICT_HEADER = (
    "policy", "seed", "makespan live (s)", "sim (s)", "x", "attainment live", "sim", "x", "points",
    "verdict",
)


def format_verdicts(seeds: Mapping[str, Any], title: str) -> str:
    """The per-seed verdict table (`by_seed`) as plain text."""
    widths = (10, 6, 19, 9, 7, 17, 8, 7, 8, 9)

    def line(cells: Sequence[str]) -> str:
        rest = zip(cells[1:], widths[1:], strict=True)
        return cells[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in rest)
    head = line(_VERDICT_HEADER)
    lines = [title, head, "-" * len(head), *(line(r) for r in _verdict_rows(seeds))]
    lines += [f"{p}: {e['verdict']} ({e['met']} of {len(e['seeds'])} seeds)" for p, e in seeds.items()]
    return "\n".join(lines)


def verdict_markdown(seeds: Mapping[str, Any], tolerance: float = TOLERANCE) -> str:
    """The per-seed verdict table (`by_seed`) for a results page, with a line saying what it judges."""
    table = markdown_table(_VERDICT_HEADER, _verdict_rows(seeds), align="lr" + "r" * 7 + "l")
    verdicts = "; ".join(f"**{p}** {e['verdict']} ({e['met']} of {len(e['seeds'])} seeds)"
                         for p, e in seeds.items())
    note = (
        f"Live against the simulator on the same sent items, per seed: the makespan (first arrival to last "
        f"finish, modelled s) and the overall SLO attainment (both objectives met, steady window); *x* is "
        f"live / simulated, *points* the attainment difference in percentage points. A seed is *met* when "
        f"both ratios lie within 1 ± {tolerance:g}. {verdicts}."
    )
    return table + "\n\n" + note


def _num(value: float | None, digits: int, sign: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:{sign}.{digits}f}"


def _share(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


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
    """The side-by-side table (attainment as a share); then the category match (share, of how many
    requests) and the verdict."""
    cols = [f"{g[:-2]}_{q}" for g, q in _FIGURES] + list(JUDGED)
    head = f"{'policy':<10}" + "".join(f"{c + ' live':>16}{'sim':>9}{'x':>7}" for c in cols)
    head += f"{'same category':>20}{'verdict':>9}"
    lines = [title, head, "-" * len(head)]
    for policy, row in fidelity.items():
        cells = "".join(
            f"{row[c]['live']:>16.2f}{row[c]['simulated']:>9.2f}{row[c]['ratio']:>7.2f}" for c in cols
        )
        match = row.get("category_match")
        if match is None or match["share"] is None or match["share"] != match["share"]:  # null / NaN
            same = "-"
        else:
            same = f"{match['share']:.1%} of {match['compared']}"
        lines.append(f"{policy:<10}{cells}{same:>20}{row.get('verdict', '-'):>9}")
    return "\n".join(lines)
