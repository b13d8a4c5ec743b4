"""The Grafana dashboard cannot rot: every panel's query runs against a real Prometheus.

A real Prometheus (the `prometheus` binary, Debian package `prometheus`) scrapes the live app's
/metrics with the scrape token every second while traffic produces every family the panels read
(completions of several categories, a preemption, quota and ingress refusals, the queue-aware
autoscaling policy's decisions); then each panel's
PromQL, with the template variables filled in as Grafana would, goes to /api/v1/query and must
succeed with at least one series holding a number. The preview picture is drawn from those results
(to docs/dashboard.png when DRIFTSCHED_DASHBOARD_PREVIEW names it). Offline checks: the dashboard's
shape and its ConfigMap in the prod overlay. Without the binary the live test skips, unless CI is set.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import METRICS_TOKEN, _free_port, app_args, scheduler_handle

from k8s import dashboard, kustomize

ROOT = Path(__file__).resolve().parents[1]
MODEL = "driftsched-sim"
ARGS = app_args(benchmark_mode=True, **{
    "core.scheduler.policy": "priority",
    "core.scheduler.preemption": {"enabled": True, "wait_s": 0.3, "min_run_s": 0.1,
                                  "max_per_request": 1, "near_end_tokens": 32},
    "replicas.time_scale": 0.5,
    # A fixed pool of 2 still runs the queue-aware policy, whose decisions the autoscaling panel shows.
    "replicas.autoscaling": {"enabled": True, "min_replicas": 2, "max_replicas": 2, "poll_interval_s": 2.0},
})


# ---------------------------------------------------------------- offline


def test_every_panel_reads_the_datasource_variable_and_driftsched_metrics() -> None:
    model = dashboard.load()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["tenant"]["multi"] and variables["tenant"]["includeAll"]
    assert dashboard.variable_source(model, "tenant") == ("driftsched_queue_depth_requests", "tenant")
    titles = [p["title"] for p in dashboard.panels(model)]
    assert len(titles) == len(set(titles)), "panel titles name the preview's cells"
    for panel in dashboard.panels(model):
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert "driftsched_" in target["expr"], target["expr"]
    with pytest.raises(KeyError, match="category"):
        dashboard.substitute('x{category=~"$category"}', {"tenant": ["a"]})


def test_prod_overlay_ships_the_dashboard_to_the_grafana_sidecar() -> None:
    resources = kustomize.build(ROOT / "k8s" / "overlays" / "prod")
    (config_map,) = [r for r in resources if r["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert config_map["metadata"]["namespace"] == "driftsched"
    assert config_map["data"] == {"driftsched.json": dashboard.DASHBOARD.read_text()}
    assert len(dashboard.DASHBOARD.read_bytes()) < 256 * 1024, "kubectl apply keeps it in an annotation"


def test_mini_kustomize_refuses_a_hashed_config_map_name(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text("{}")
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator: [{name: d, files: [d.json]}]\n")
    with pytest.raises(ValueError, match="hashed name"):
        kustomize.build(tmp_path)


# ---------------------------------------------------------------- a real Prometheus


class Prometheus:
    """A private Prometheus scraping one target every second; `query` answers instant queries."""

    def __init__(self, binary: str, work: Path, target: str) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "driftsched", "metrics_path": "/metrics", "scrape_timeout": "1s",
                "authorization": {"type": "Bearer", "credentials": METRICS_TOKEN},
                "static_configs": [{"targets": [target]}],
            }],
        }
        (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = (work / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: Any) -> Any:
        reply = httpx.get(self.url + path, params=params, timeout=10).json()
        assert reply["status"] == "success", f"{path} {params}: {reply}"
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query_range", query=expr, start=start, end=end, step=1)
        assert data["resultType"] == "matrix", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_until(self, expr: str, at_least: float, timeout_s: float = 20.0) -> None:
        """Until `expr` (one series) is >= at_least, i.e. Prometheus scraped what the app did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                starting = httpx.get(self.url + "/-/ready", timeout=10).status_code != 200
                found = [] if starting else self.query(expr)  # the API answers 503 until it is ready
            except httpx.TransportError:  # not listening yet
                found = []
            if found and float(found[0]["value"][1]) >= at_least:
                return
            time.sleep(0.25)
        raise AssertionError(f"Prometheus never saw {expr} >= {at_least}; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the prometheus binary is absent (.ci/run installs it)")
        pytest.skip("the prometheus binary is absent (apt-get install prometheus); CI fails instead")
    return binary


async def _complete(base_url: str, key: str, target_tokens: int, prompt: str = "tell me about rivers",
                    **extra: Any) -> int:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    try:
        await client.completions.create(model=MODEL, prompt=prompt, max_tokens=max(target_tokens, 30),
                                        extra_body={"driftsched_target_tokens": target_tokens, **extra})
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


async def _first_round(base_url: str) -> list[int]:
    """Requests of several categories finish; tiny goes over its quota; a bad key. (No short bronze
    longform: its drift factor would shrink the long runs' estimates below preemption's threshold.)"""
    tiny = [await _complete(base_url, "sk-test-tiny", 5) for _ in range(3)]  # in turn: 2 per minute
    calls = [_complete(base_url, key, n, category=category)
              for key, category, n in (("sk-test-gold", "qa", 12), ("sk-test-gold", "code", 40),
                                       ("sk-test-gold", "longform", 60), ("sk-test-bronze", "qa", 12),
                                       ("sk-test-bronze", "code", 40), ("sk-test-bronze", "qa", 20))]
    calls.append(_complete(base_url, "sk-nope", 5))
    return tiny + list(await asyncio.gather(*calls))


async def _second_round(base_url: str) -> list[int]:
    """Long bronze runs fill every slot; a gold request preempts one; refusals again, so rates are > 0."""
    essay = "write a detailed essay about rivers"  # a longform estimate, far from its end when preempted
    long = [asyncio.create_task(_complete(base_url, "sk-test-bronze", 900, essay)) for _ in range(4)]
    scheduler = scheduler_handle(ARGS)
    deadline = time.monotonic() + 10
    while (await scheduler.view.remote()).stats.in_flight.get("bronze", 0) < 4:  # every slot held
        assert time.monotonic() < deadline, "the long bronze runs never held every slot"
        await asyncio.sleep(0.05)
    short = [_complete(base_url, "sk-test-gold", 10, category=c) for c in ("qa", "code")]
    refused = [_complete(base_url, "sk-test-tiny", 5), _complete(base_url, "sk-nope", 5)]
    return list(await asyncio.gather(*short, *refused, *long))


@pytest.mark.slow
def test_every_panel_query_returns_series_from_a_real_prometheus(
    serve_cluster: Any, prometheus_binary: str, tmp_path: Path
) -> None:
    serve_cluster.deploy(ARGS)
    base_url = serve_cluster.base_url
    prometheus = Prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{serve_cluster.port}")
    try:
        prometheus.wait_until("min(driftsched_scheduler_up)", 1)
        started = time.time()
        assert asyncio.run(_first_round(base_url)) == [200, 200, 429] + [200] * 6 + [401]
        prometheus.wait_until("sum(driftsched_requests_completed_total)", 8)
        assert asyncio.run(_second_round(base_url)) == [200, 200, 429, 401] + [200] * 4
        prometheus.wait_until("sum(driftsched_requests_completed_total)", 14)
        prometheus.wait_until("sum(driftsched_requests_preempted_total)", 1)
        prometheus.wait_until("max(driftsched_autoscale_target_replicas)", 2)  # the policy polls every 2 s
        time.sleep(2)  # two more scrapes: every series has samples after the traffic

        model = dashboard.load()
        metric, label = dashboard.variable_source(model, "tenant")
        tenants = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
        assert set(tenants) == {"gold", "bronze", "tiny"}
        results: dict[dashboard.PanelQuery, list[dashboard.Series]] = {}
        now = time.time()
        for query in dashboard.queries(model):
            expr = dashboard.substitute(query.expr, {"tenant": sorted(tenants)})
            found = prometheus.query(expr)
            values = [float(s["value"][1]) for s in found]
            assert any(math.isfinite(v) for v in values), f"{query.panel} {query.ref_id}: {expr} -> {found}"
            # The picture: the same query over the run, as the panel draws it.
            results[query] = [
                dashboard.Series(dashboard.series_name(query.legend, s["metric"]),
                                 [(float(t), float(v)) for t, v in s["values"]])
                for s in prometheus.query_range(expr, started, now)
            ]
    finally:
        prometheus.stop()

    def peak(panel: str, name: str, ref_id: str = "A") -> float:
        (found,) = [s for q, s in results.items() if (q.panel, q.ref_id) == (panel, ref_id)]
        return max((v for s in found if s.name == name for _, v in s.points), default=0.0)

    assert peak("Preemptions / s", "bronze") > 0
    assert peak("Rejected / s by reason", "tiny tenant_request_quota") > 0
    assert peak("Queue depth", "bronze running", "B") >= 2
    picture = Path(os.environ.get("DRIFTSCHED_DASHBOARD_PREVIEW") or tmp_path / "dashboard.png")
    dashboard.render_preview(results, picture, "DriftSched dashboard, every panel's query over a test run "
                             "(tests/test_dashboard.py: simulated replicas, real Prometheus)")
    assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size < 200 * 1024
