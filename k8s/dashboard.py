"""The Grafana dashboard (k8s/monitoring/grafana/driftsched.json): its panels' queries, and a preview.

The JSON file is the source; the k8s monitoring kustomization ships it as a ConfigMap for Grafana's
sidecar. `tests/test_dashboard.py` runs every query here against a real Prometheus that scraped a
live app, and `render_preview` draws the picture in docs/operations.md from those results, so what the picture
shows is what the queries return. Template variables are substituted the way Grafana would for one
concrete choice: `$tenant` (multi-value, used with `=~`) becomes a regex alternation of the chosen
tenants and `$__rate_interval` a fixed window.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "monitoring" / "grafana" / "driftsched.json"
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"label_values\((\w+),\s*(\w+)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel: the PromQL as written in the dashboard and its legend format."""

    panel: str
    kind: str
    text_mode: str
    """A stat panel's `textMode`: "name" shows the series' names (an info metric), else values."""
    ref_id: str
    expr: str
    legend: str


@dataclass(frozen=True)
class Series:
    """One series of a range query's result, named by the target's legend format."""

    name: str
    points: list[tuple[float, float]]
    """(unix time, value); NaN where the query had no value (a quantile of no observations)."""


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard's JSON model."""
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that draws data, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panels({"panels": panel.get("panels", [])})
        else:
            yield panel


def queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every target of every panel, in dashboard order."""
    return [
        PanelQuery(panel["title"], panel["type"], panel.get("options", {}).get("textMode", "auto"),
                   target["refId"], target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def variable_source(dashboard: Mapping[str, Any], name: str) -> tuple[str, str]:
    """(metric, label) of a `label_values(metric, label)` query variable."""
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    match = _LABEL_VALUES.fullmatch(query.strip())
    if match is None:
        raise ValueError(f"variable {name!r} query {query!r} is not label_values(metric, label)")
    return match.group(1), match.group(2)


def substitute(expr: str, values: Mapping[str, Sequence[str]], rate_interval: str = "30s") -> str:
    """`expr` with Grafana's variables replaced; a variable with no value given is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "__rate_interval":
            return rate_interval
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        chosen = values[name]
        return chosen[0] if len(chosen) == 1 else "(" + "|".join(re.escape(v) for v in chosen) + ")"

    return _VARIABLE.sub(replace, expr)


def series_name(legend: str, labels: Mapping[str, str]) -> str:
    """A series' name as Grafana draws it from the target's legend format."""
    if not legend:
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), legend)


def render_preview(results: Mapping[PanelQuery, list[Series]], path: Path, title: str) -> None:
    """A PNG of the dashboard's panels as Grafana draws them: stat panels as their last value (or the
    series' names for `textMode: name`), the others as time series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_panel: dict[str, list[tuple[PanelQuery, list[Series]]]] = {}
    for query, found in results.items():
        by_panel.setdefault(query.panel, []).append((query, found))
    start = min((t for found in results.values() for s in found for t, _ in s.points[:1]), default=0.0)
    columns = 4
    rows = math.ceil(len(by_panel) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(16, 2.7 * rows), squeeze=False)
    for ax, (panel, targets) in zip(axes.flat, by_panel.items(), strict=False):
        ax.set_title(panel, fontsize=9, loc="left")
        first = targets[0][0]
        series = [s for _, found in targets for s in found]
        if first.kind == "stat":
            shown = [s.name if first.text_mode == "name" else _format(_last(s)) for s in series]
            ax.text(0.5, 0.45, ", ".join(shown) or "no data", ha="center", va="center", fontsize=18)
            ax.set_axis_off()
            continue
        for s in series:  # NaN points leave gaps, as in Grafana
            ax.plot([t - start for t, _ in s.points], [v for _, v in s.points], label=s.name, linewidth=1.2)
        ax.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("seconds", fontsize=6)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
    for ax in axes.flat[len(by_panel):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def _last(series: Series) -> float:
    values = [v for _, v in series.points if math.isfinite(v)]
    return values[-1] if values else math.nan


def _format(value: float) -> str:
    return "NaN" if not math.isfinite(value) else f"{value:.3g}"
