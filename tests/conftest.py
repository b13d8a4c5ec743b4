"""Shared fixture for the Ray Serve tests: one private Ray + Serve per test session, on 127.0.0.1."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

DEMO_KEYS = {"sk-test-gold": "gold", "sk-test-bronze": "bronze", "sk-test-tiny": "tiny"}
METRICS_TOKEN = "test-metrics-scrape-token"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}
"""What a scrape of GET /metrics sends: it answers only the metrics token, never a tenant key."""

BASE_ARGS: dict[str, Any] = {
    "benchmark_mode": True,
    "auth": {"demo_keys": DEMO_KEYS, "keys_env": None, "demo_metrics_token": METRICS_TOKEN,
             "metrics_token_env": None},
    "core": {
        "tenants": [
            {"name": "gold", "tier": 0, "weight": 4.0},
            {"name": "bronze", "tier": 2, "weight": 1.0},
            {"name": "tiny", "tier": 1, "requests_per_minute": 2, "max_queued": 1},
        ],
        "scheduler": {"policy": "sjf", "max_queued_total": 40, "max_request_tokens": 4096},
    },
    "replicas": {"num_replicas": 2, "max_num_seqs": 2, "time_scale": 0.02, "heartbeat_s": 0.2,
                 "drift_push_s": 0.3, "model": "qwen3-0.6b-bf16"},
    "gateway": {"queue_timeout_s": 20, "stall_timeout_s": 15, "drift_refresh_s": 0.3,
                "replica_timeout_s": 3.0, "ingress_max_ongoing_requests": 1000},
}


def app_args(**overrides: Any) -> dict[str, Any]:
    """BASE_ARGS with dotted-path overrides, e.g. app_args(**{"core.scheduler.policy": "fifo"})."""
    args = copy.deepcopy(BASE_ARGS)
    for path, value in overrides.items():
        node = args
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return args


class ServeCluster:
    """A running Ray + Serve; `deploy` (re)deploys the DriftSched app and returns its base URL."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def deploy(self, args: dict[str, Any]) -> str:
        from ray import serve

        from serve_app.app import build_app

        serve.run(build_app(args), name="driftsched", route_prefix="/")
        return self.base_url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[ServeCluster]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="dsray-", dir="/tmp")
    ray.init(_temp_dir=temp_dir, _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=8,
             log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeCluster(port)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def scheduler_handle(args: dict[str, Any]) -> Any:
    """The scheduler actor of a deployed app (named after the app and its config fingerprint)."""
    import ray

    from deployments.actors import NAMESPACE
    from serve_app.config import parse_app_config

    name = f"driftsched.scheduler.{parse_app_config(args).fingerprint()}"
    return ray.get_actor(name, namespace=NAMESPACE)


def vllm_replicas(model_dir: Any, work: Any, **overrides: Any) -> dict[str, Any]:
    """The `replicas` section of a real vLLM (CPU) app on the tiny model; `overrides` replace fields."""
    return {
        "engine": "vllm", "num_replicas": 2, "model": str(model_dir), "served_model_name": "tiny-llama",
        "max_num_seqs": 4, "max_num_batched_tokens": 512, "num_cpus": 1, "heartbeat_s": 0.2,
        "drift_push_s": 0.3,
        "engine_args": {"dtype": "float32", "enforce_eager": True, "max_model_len": 512,
                        "kv_cache_memory_bytes": 32 * 2**20},
        "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1",
                "HF_HUB_OFFLINE": "1", "TMPDIR": str(work), "VLLM_CACHE_ROOT": str(work / "cache"),
                "TOKENIZERS_PARALLELISM": "false"},
        **overrides,
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny random Llama and tokenizer for vLLM tests (`driftsched make-tiny-model`), built once."""
    pytest.importorskip("vllm")
    from driftsched.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-llama")
