"""Figures of a block protocol (`driftsched.bench.blocks`) with their intervals, and the verdicts on
the targets of a comparison with bare vLLM (benchmarks/bench_vllm.py).

A `Block` holds what one set-up did with one round's arrivals, judged as every report judges
requests (`driftsched.sim.attainment.slo_flags`). Per set-up and tenant (and ``all``), over its
blocks pooled: the shares meeting the TTFT objective, the TPOT objective and both; TTFT p50 and p99;
goodput (output tokens and requests that met both, per second of the blocks' arrival spans). Each is
an `Estimate` with a bootstrap interval over rounds. A saturation phase gives per (set-up, round) the
output tokens generated within a fixed window; a set-up's throughput is their sum over the windows'
total, its ratio to the reference the ratio of the sums over the same rounds (paired).

Targets (`verdict_rows`), each judged on a paired interval: saturation throughput of driftsched-default
and driftsched-fifo >= 0.97x vllm-fcfs's (lower end >= 0.95x); at low load driftsched-fifo's TTFT p50
at most 5 ms and p99 at most 20 ms above vllm-fcfs's (one-sided: being faster is no overhead); the
interactive tenant's TTFT p99 under driftsched-default <= 1.1x its p99 under vllm-priority; each
tenant's both-met share under driftsched-default >= its share under vllm-fcfs; driftsched-default's
goodput >= each vLLM set-up's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from driftsched.bench.blocks import Estimate, Target, bootstrap, bootstrap_many, percentile, verdict

REFERENCE = "vllm-fcfs"
PRIORITY = "vllm-priority"
SHIPPED = "driftsched-default"
BARE_ORDER = "driftsched-fifo"  # DriftSched in vLLM's own order: what is left is the data path's cost


@dataclass(frozen=True, slots=True)
class Block:
    """One set-up's requests of one round: tenant, TTFT in s (inf: none came), whether the TTFT and TPOT
    objectives were met, output tokens; `length_s`, the segment's arrival span (goodput's clock)."""

    setup: str
    round: int
    length_s: float
    tenant: np.ndarray
    ttft_s: np.ndarray
    ttft_met: np.ndarray
    tpot_met: np.ndarray
    tokens: np.ndarray


Blocks = Mapping[str, Sequence[Block]]  # set-up -> its blocks, by round
Stat = Callable[[Sequence[int]], float]


def _subset(blocks: Sequence[Block], tenant: str | None) -> list[Block]:
    """`blocks` with only `tenant`'s requests (None: all)."""
    if tenant is None:
        return list(blocks)
    out = []
    for b in blocks:
        m = b.tenant == tenant
        out.append(Block(b.setup, b.round, b.length_s, b.tenant[m], b.ttft_s[m], b.ttft_met[m], b.tpot_met[m],
                         b.tokens[m]))
    return out


FIGURES = ("slo_ttft", "slo_tpot", "slo_both", "ttft_p50", "ttft_p99", "goodput_tokens", "goodput_requests")


def figures(blocks: Sequence[Block], rounds: Sequence[int]) -> dict[str, float]:
    """Every figure (`FIGURES`) over the blocks of `rounds` pooled (repeats count twice)."""
    parts = [blocks[r] for r in rounds]
    ttft = np.concatenate([b.ttft_s for b in parts])
    ttft_met = np.concatenate([b.ttft_met for b in parts])
    tpot_met = np.concatenate([b.tpot_met for b in parts])
    tokens = np.concatenate([b.tokens for b in parts])
    both = ttft_met & tpot_met
    n, length = ttft.size, sum(b.length_s for b in parts)
    nan = float("nan")
    return {
        "slo_ttft": float(ttft_met.sum() / n) if n else nan,
        "slo_tpot": float(tpot_met.sum() / n) if n else nan,
        "slo_both": float(both.sum() / n) if n else nan,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "goodput_tokens": float(tokens[both].sum() / length) if length > 0 else nan,
        "goodput_requests": float(both.sum() / length) if length > 0 else nan,
    }


def figure(name: str, blocks: Sequence[Block], rounds: Sequence[int], tenant: str | None) -> float:
    """One figure (`FIGURES`) over the blocks of `rounds` for `tenant` (None: all)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose from {', '.join(FIGURES)}")
    return figures(_subset(blocks, tenant), rounds)[name]


def paired(name: str, a: Sequence[Block], b: Sequence[Block], tenant: str | None,
           combine: Callable[[float, float], float], draws: int, seed: int) -> Estimate:
    """``combine(a's figure, b's figure)`` over the same rounds for both (paired), with its interval."""
    a, b = _subset(a, tenant), _subset(b, tenant)
    return bootstrap(lambda idx: combine(figures(a, idx)[name], figures(b, idx)[name]),
                     min(len(a), len(b)), draws, seed)


def ratio(x: float, y: float) -> float:
    """x / y; infinite for a positive x over 0 (something against nothing), NaN for 0 / 0."""
    if y == 0:
        return float("inf") if x > 0 else float("nan")
    return x / y


def difference(x: float, y: float) -> float:
    return x - y


def group_figures(blocks: Sequence[Block], tenant: str | None, draws: int, seed: int) -> dict[str, Any]:
    """The summary.json figures of one set-up and tenant (None: all), each ``{value, ci95}``."""
    mine = _subset(blocks, tenant)
    got = bootstrap_many(lambda idx: list(figures(mine, idx).values()), len(mine), draws, seed)
    est = {name: e.to_json() for name, e in zip(FIGURES, got, strict=True)}
    return {
        "requests": sum(b.tenant.size for b in mine),
        "slo": {"ttft": est["slo_ttft"], "tpot": est["slo_tpot"], "both": est["slo_both"]},
        "ttft_s": {"p50": est["ttft_p50"], "p99": est["ttft_p99"]},
        "goodput": {"tokens_per_s": est["goodput_tokens"], "requests_per_s": est["goodput_requests"]},
    }


def phase_figures(blocks: Blocks, tenants: Sequence[str], draws: int, seed: int) -> dict[str, Any]:
    """Per set-up: ``all`` and ``per_tenant`` figures with intervals, and the rounds they rest on."""
    return {setup: {"rounds": len(bs), "all": group_figures(bs, None, draws, seed),
                    "per_tenant": {t: group_figures(bs, t, draws, seed) for t in tenants}}
            for setup, bs in blocks.items()}


# -- saturation ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throughput:
    """One saturation block: output tokens generated within its measuring window of `window_s`."""

    setup: str
    round: int
    window_s: float
    tokens: float


def rate(blocks: Sequence[Throughput], rounds: Sequence[int]) -> float:
    """Output tokens/s over the windows of `rounds` (repeats count twice)."""
    seconds = sum(blocks[r].window_s for r in rounds)
    return sum(blocks[r].tokens for r in rounds) / seconds if seconds > 0 else float("nan")


def rate_ratio(a: Sequence[Throughput], b: Sequence[Throughput], rounds: Sequence[int]) -> float:
    """a's tokens/s over b's, in the same rounds."""
    return ratio(rate(a, rounds), rate(b, rounds))


def saturation(blocks: Mapping[str, Sequence[Throughput]], draws: int, seed: int,
               reference: str = REFERENCE) -> dict[str, Any]:
    """Per set-up: ``tokens_per_s`` (all windows' tokens over their total length), and its
    ``ratio_to_<reference>`` (tokens over the reference's in the same rounds) with ``ratio_ci95``."""
    key = "ratio_to_" + reference.replace("-", "_")
    ref = blocks.get(reference)
    out: dict[str, Any] = {}
    for setup, bs in blocks.items():
        tokens = bootstrap(partial(rate, bs), len(bs), draws, seed)
        doc: dict[str, Any] = {"rounds": len(bs), "tokens_per_s": tokens.value,
                               "tokens_per_s_ci95": tokens.to_json()["ci95"]}
        if ref is not None:
            n = min(len(bs), len(ref))
            rel = bootstrap(partial(rate_ratio, bs, ref), n, draws, seed)
            doc[key], doc["ratio_ci95"] = rel.value, rel.to_json()["ci95"]
        out[setup] = doc
    return out


# -- verdicts ------------------------------------------------------------------------------------------

SATURATION = Target(0.97, ci_bound=0.95)
LOW_LOAD_P50_S = Target(0.005, higher_is_better=False)
LOW_LOAD_P99_S = Target(0.020, higher_is_better=False)
INTERACTIVE_P99 = Target(1.1, higher_is_better=False)
NOT_WORSE = Target(0.0)
GOODPUT = Target(1.0)


def _row(target: str, setup: str, versus: str, tenant: str, figure_text: str, est: Estimate, bound: Target,
         unit: str = "{:.3f}") -> dict[str, Any]:
    return {"target": target, "setup": setup, "versus": versus, "tenant": tenant, "figure": figure_text,
            **est.to_json(), "text": est.text(unit), "bound": bound.text(), "verdict": verdict(est, bound)}


def verdict_rows(main: Blocks, low: Blocks, sat: Mapping[str, Sequence[Throughput]], tenants: Sequence[str],
                 draws: int, seed: int, interactive: str = "interactive") -> list[dict[str, Any]]:
    """A verdict per target whose set-ups ran (see the issue's targets), each from a paired interval."""
    rows = []
    for setup in (SHIPPED, BARE_ORDER):
        if setup in sat and REFERENCE in sat:
            bs, ref = sat[setup], sat[REFERENCE]
            est = bootstrap(partial(rate_ratio, bs, ref), min(len(bs), len(ref)), draws, seed)
            rows.append(_row("saturation throughput", setup, REFERENCE, "all", "tokens/s ratio", est,
                             SATURATION))
    if BARE_ORDER in low and REFERENCE in low:
        for name, bound in (("ttft_p50", LOW_LOAD_P50_S), ("ttft_p99", LOW_LOAD_P99_S)):
            est = paired(name, low[BARE_ORDER], low[REFERENCE], None, difference, draws, seed)
            rows.append(_row("low-load overhead", BARE_ORDER, REFERENCE, "all",
                             f"TTFT {name[-3:]} difference (s)", est, bound, "{:.4f}"))
    if SHIPPED in main and PRIORITY in main:
        est = paired("ttft_p99", main[SHIPPED], main[PRIORITY], interactive, ratio, draws, seed)
        rows.append(_row("interactive TTFT", SHIPPED, PRIORITY, interactive, "TTFT p99 ratio", est,
                         INTERACTIVE_P99))
    if SHIPPED in main and REFERENCE in main:
        for tenant in tenants:
            est = paired("slo_both", main[SHIPPED], main[REFERENCE], tenant, difference, draws, seed)
            rows.append(_row("SLO attainment", SHIPPED, REFERENCE, tenant, "both-met share difference",
                             est, NOT_WORSE))
    for versus in (REFERENCE, PRIORITY):
        if SHIPPED in main and versus in main:
            est = paired("goodput_tokens", main[SHIPPED], main[versus], None, ratio, draws, seed)
            rows.append(_row("goodput", SHIPPED, versus, "all", "goodput tokens/s ratio", est, GOODPUT))
    return rows
