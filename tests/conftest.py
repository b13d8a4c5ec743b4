"""Shared fixtures for the Ray Serve tests (one private Ray + Serve per test session, on 127.0.0.1), and
the guard that keeps `make test-fast` (`pytest -m "not slow"`) free of Ray and vLLM.

A test that starts Ray, Serve or vLLM carries the `slow` marker. A test without it that uses a fixture
in HEAVY_FIXTURES fails before the fixture runs; one that starts Ray or imports vLLM by other means fails
at teardown. Either way the message says to mark it slow, so the fast run never starts them silently.
`slow` tests get SLOW_TIMEOUT_S; every other test has pyproject's short `timeout`, so a hang shows fast.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

SLOW_TIMEOUT_S = 600
"""Per-test limit of a `slow` test: its first test also pays for starting Ray or loading a vLLM model."""
HEAVY_FIXTURES = frozenset({"serve_cluster", "tiny_model_dir"})
"""Fixtures that start Ray + Serve or vLLM; a test using one, directly or through another fixture, is slow."""


class HeavyStarts:
    """Counts what this process starts of Ray and vLLM, for the guard around each test that is not slow.

    Every Ray start (ray.init, serve.start, ...) spawns Ray's GCS server with subprocess.Popen, which an
    audit hook sees even when the test shuts Ray down again; vLLM counts once it is imported.
    """

    def __init__(self) -> None:
        self.ray_starts = 0
        sys.addaudithook(self._audit)  # hooks cannot be removed: one per process (pytest_configure)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "subprocess.Popen":
            argv = args[1] if isinstance(args[1], list | tuple) else [args[1]]
            if argv and os.path.basename(str(argv[0])) == "gcs_server":
                self.ray_starts += 1

    def now(self) -> tuple[int, bool]:
        return self.ray_starts, "vllm" in sys.modules


_HEAVY = pytest.StashKey[HeavyStarts]()
_HEAVY_BEFORE = pytest.StashKey[tuple[int, bool]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_HEAVY] = HeavyStarts()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def _mark_it_slow(item: pytest.Item, what: str) -> str:
    return (f"{item.nodeid} {what} but is not marked slow: add `@pytest.mark.slow` (or the module's "
            "`pytestmark = pytest.mark.slow`) so that `make test-fast` leaves it out")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slow"):
        return
    heavy = HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if heavy:  # before any fixture is set up, so Ray is never started
        pytest.fail(_mark_it_slow(item, f"uses {', '.join(sorted(heavy))}"), pytrace=False)
    item.stash[_HEAVY_BEFORE] = item.config.stash[_HEAVY].now()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield  # the fixtures are torn down first, so the next test starts clean
    before = item.stash.get(_HEAVY_BEFORE, None)
    if before is None:
        return
    (ray_before, vllm_before), (ray_after, vllm_after) = before, item.config.stash[_HEAVY].now()
    started = [name for name, new in (("Ray", ray_after > ray_before), ("vLLM", vllm_after > vllm_before))
               if new]
    if started:
        pytest.fail(_mark_it_slow(item, f"started {' and '.join(started)}"), pytrace=False)


DEMO_KEYS = {"sk-test-gold": "gold", "sk-test-bronze": "bronze", "sk-test-tiny": "tiny"}
METRICS_TOKEN = "test-metrics-scrape-token"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}
"""What a scrape of GET /metrics sends: it answers only the metrics token, never a tenant key."""


def metric_samples(text: str, name: str, having: str = "") -> list[float]:
    """The values of `name`'s labelled samples in a /metrics text whose labels contain `having`."""
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{") and having in line]


BASE_ARGS: dict[str, Any] = {
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
                 "model": "qwen3-0.6b-bf16"},
    "gateway": {"queue_timeout_s": 20, "stall_timeout_s": 15, "drift_refresh_s": 0.3,
                "replica_timeout_s": 3.0, "ingress_max_ongoing_requests": 1000},
}


def app_args(**overrides: Any) -> dict[str, Any]:
    """BASE_ARGS with dotted-path overrides, e.g. app_args(**{"core.scheduler.policy": "fifo"}).

    BASE_ARGS keeps the shipped `benchmark_mode` (off); a test whose requests need the exact output length
    of `driftsched_target_tokens` asks for `app_args(benchmark_mode=True, ...)`.
    """
    args = copy.deepcopy(BASE_ARGS)
    for path, value in overrides.items():
        node = args
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return args


APP_NAME = "driftsched"
"""The Serve application name `ServeCluster.deploy` uses."""


class ServeCluster:
    """A running Ray + Serve; `deploy` (re)deploys the DriftSched app and returns its base URL."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def deploy(self, args: dict[str, Any]) -> str:
        from ray import serve

        from serve_app.app import build_app

        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
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


def app_actor(args: dict[str, Any], role: str) -> Any:
    """The named actor of `role` ("scheduler" or "drift") of the app `ServeCluster.deploy`ed with `args`."""
    import ray

    from deployments.actors import NAMESPACE, ActorRole, actor_name
    from serve_app.config import parse_app_config

    name = actor_name(APP_NAME, ActorRole(role), parse_app_config(args).fingerprint())
    return ray.get_actor(name, namespace=NAMESPACE)


def scheduler_handle(args: dict[str, Any]) -> Any:
    """The scheduler actor of the app deployed with `args`."""
    return app_actor(args, "scheduler")


def vllm_replicas(model_dir: Any, work: Any, **overrides: Any) -> dict[str, Any]:
    """The `replicas` section of a real vLLM (CPU) app on the tiny model; `overrides` replace fields."""
    return {
        "engine": "vllm", "num_replicas": 2, "model": str(model_dir), "served_model_name": "tiny-llama",
        "max_num_seqs": 4, "max_num_batched_tokens": 512, "num_cpus": 1, "heartbeat_s": 0.2,
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
