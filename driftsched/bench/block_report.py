"""Tables of a block protocol's summary (`driftsched.bench.block_figures`): each figure printed as
``value [lo, hi]``, its bootstrap 95 % interval beside it, for the terminal and for a results page."""

from __future__ import annotations

from typing import Any

from driftsched.bench.blocks import Estimate


def share(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def estimate_text(doc: dict[str, Any], fmt: str, scale: float = 1.0) -> str:
    """A summary.json ``{value, ci95}`` (None for NaN, as written) as ``value [lo, hi]``."""
    ci = doc.get("ci95")
    interval = None if ci is None else (scale * _num(ci[0]), scale * _num(ci[1]))
    return Estimate(scale * _num(doc.get("value")), interval).text(fmt)


PHASE_HEADER = ["set-up", "tenant", "requests", "both met %", "TTFT met %", "TPOT met %", "TTFT p50 (s)",
                "TTFT p99 (s)", "goodput tok/s"]
PHASE_ALIGN = "ll" + "r" * 7


def phase_rows(figures: dict[str, Any]) -> list[list[str]]:
    """Per set-up and tenant (`block_figures.phase_figures`): each figure with its interval."""
    rows = []
    for setup, doc in figures.items():
        for tenant, g in (("all", doc["all"]), *doc["per_tenant"].items()):
            rows.append([f"**{setup}**" if tenant == "all" else "", tenant, str(g["requests"]),
                         *(estimate_text(g["slo"][k], "{:.1f}", 100) for k in ("both", "ttft", "tpot")),
                         estimate_text(g["ttft_s"]["p50"], "{:.3f}"),
                         estimate_text(g["ttft_s"]["p99"], "{:.3f}"),
                         estimate_text(g["goodput"]["tokens_per_s"], "{:.0f}")])
    return rows


def saturation_header(reference: str) -> list[str]:
    return ["set-up", "output tok/s", "ratio to " + reference]


def saturation_rows(sat: dict[str, Any], reference: str) -> list[list[str]]:
    """Per set-up (`block_figures.saturation`): tokens/s and the ratio to `reference`, with intervals."""
    key = "ratio_to_" + reference.replace("-", "_")
    return [[setup, estimate_text({"value": d["tokens_per_s"], "ci95": d["tokens_per_s_ci95"]}, "{:.0f}"),
             estimate_text({"value": d[key], "ci95": d["ratio_ci95"]}, "{:.3f}") if key in d else "n/a"]
            for setup, d in sat.items()]


VERDICT_HEADER = ["target", "set-up", "versus", "tenant", "figure", "value [95 % interval]", "bound",
                  "verdict"]


def verdict_rows(verdicts: list[dict[str, Any]]) -> list[list[str]]:
    """`block_figures.verdict_rows` as table rows, the verdict in bold."""
    return [[v["target"], v["setup"], v["versus"], v["tenant"], v["figure"], v["text"], v["bound"],
             f"**{v['verdict']}**"] for v in verdicts]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table for the terminal (Markdown bold dropped)."""
    cells = [header, *[[c.replace("**", "") for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
