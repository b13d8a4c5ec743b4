"""The app under test: a private Ray + Serve on 127.0.0.1, and what the service reports on /metrics.

`LocalServe` starts its own Ray instance (own temp dir, auth off, no dashboard) so it never joins a
cluster someone else is running, deploys the DriftSched app with given args, waits until the scheduler
answers and every replica has registered its slots, and removes the app and its named actors again.
It deploys with a metrics token of its own (unless the args carry one), since /metrics answers only
that token (`scrape_metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import secrets
import shutil
import socket
import tempfile
import time
from types import TracebackType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

APP_NAME = "driftsched"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServe:
    """Context manager owning one private Ray + Serve; `deploy` returns the app's /v1 base URL."""

    def __init__(self, port: int = 0, num_cpus: int = 8, ready_timeout_s: float = 120.0) -> None:
        self.port = port or free_port()
        self.num_cpus = num_cpus
        self.ready_timeout_s = ready_timeout_s
        self.root = f"http://127.0.0.1:{self.port}"
        self._temp_dir: str | None = None
        self._fingerprint: str | None = None
        self.metrics_token = secrets.token_urlsafe(24)
        """What `deploy` scrapes /metrics with: the args' auth.demo_metrics_token, or this one."""

    def __enter__(self) -> LocalServe:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        import ray
        from ray import serve

        self._temp_dir = tempfile.mkdtemp(prefix="dsbench-ray-", dir="/tmp")
        ray.init(
            _temp_dir=self._temp_dir,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=self.num_cpus,
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}},
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()  # type: ignore[no-untyped-call]  # Ray leaves serve.shutdown unannotated
        finally:
            ray.shutdown()
            if self._temp_dir:
                shutil.rmtree(self._temp_dir, ignore_errors=True)

    def deploy(self, args: dict[str, Any]) -> str:
        """Deploy (or redeploy) the app with `args`; returns once it can serve."""
        from ray import serve

        from serve_app.app import build_app
        from serve_app.config import parse_app_config

        args = copy.deepcopy(args)
        auth = args.setdefault("auth", {})
        if auth.get("demo_metrics_token"):
            self.metrics_token = auth["demo_metrics_token"]
        else:
            auth["demo_metrics_token"] = self.metrics_token
        config = parse_app_config(args)
        self._fingerprint = config.fingerprint()
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        self._wait_ready(config.replicas.num_replicas)
        return self.root + "/v1"

    def _wait_ready(self, replicas: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                text = scrape_metrics(self.root, self.metrics_token, timeout_s=5.0)
                if sum(1 for _ in _samples(text, "driftsched_replica_slots")) >= replicas:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the app did not report {replicas} replicas within {self.ready_timeout_s:g}s")

    def remove(self) -> None:
        """Delete the app and its detached scheduler/drift actors (they outlive a Serve app)."""
        import ray
        from ray import serve

        from deployments.actors import NAMESPACE, ActorRole, actor_name

        serve.delete(APP_NAME)
        if self._fingerprint is None:  # never deployed: no actors of its own
            return
        for role in ActorRole:
            with contextlib.suppress(ValueError):  # never created, or already gone
                ray.kill(ray.get_actor(actor_name(APP_NAME, role, self._fingerprint), namespace=NAMESPACE))


def scrape_metrics(root: str, token: str, timeout_s: float = 10.0) -> str:
    """GET `root`/metrics with the scrape token; raises httpx.HTTPStatusError when refused (401/403/404)."""
    resp = httpx.get(root + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
    resp.raise_for_status()
    return resp.text


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


def service_estimator(text: str, skip_tenants: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Raw ("uncorrected") and corrected MAE/RMSE over all observations, from a /metrics scrape.

    The service reports them per (tenant, category) with the observation count; the totals weight MAE
    by count and RMSE by count in the square. Rows of tenant "*" (per-category totals) are skipped.
    """
    counts = {
        (lb["tenant"], lb["category"]): v
        for lb, v in _samples(text, "driftsched_estimate_observations")
        if lb["tenant"] != "*" and lb["tenant"] not in skip_tenants
    }
    total = sum(counts.values())
    out: dict[str, Any] = {"observations": int(total)}
    for kind, name in (("raw", "uncorrected"), ("corrected", "corrected")):
        mae = rmse = 0.0
        for metric, into in (
            ("driftsched_estimate_mae_tokens", "mae"),
            ("driftsched_estimate_rmse_tokens", "rmse"),
        ):
            acc = 0.0
            for lb, v in _samples(text, metric):
                n = counts.get((lb["tenant"], lb["category"]), 0.0)
                if lb["estimate"] == kind and n:
                    acc += n * (v * v if into == "rmse" else v)
            if into == "mae":
                mae = acc / total if total else math.nan
            else:
                rmse = math.sqrt(acc / total) if total else math.nan
        out[name] = {"mae": mae, "rmse": rmse}
    return out


def scrape_estimator(
    root: str, token: str, expect_observations: int, skip_tenants: frozenset[str] = frozenset(),
    wait_s: float = 15.0,
) -> dict[str, Any]:
    """`service_estimator` once the service has folded in `expect_observations` (or `wait_s` passed).

    Replicas push observations in batches and each ingress refreshes its copy periodically, so the
    last requests show up a few seconds after they finished.
    """
    deadline = time.monotonic() + wait_s
    while True:
        est = service_estimator(scrape_metrics(root, token), skip_tenants)
        if est["observations"] >= expect_observations or time.monotonic() > deadline:
            return est
        time.sleep(0.5)
