"""Where the drift snapshot is kept: locations parsed, and the Redis store against a real Redis.

A real `redis-server` (Debian package `redis-server`) runs on 127.0.0.1 with a password, as the
RayService's GCS fault-tolerance Redis does. Without the binary those tests skip, unless CI is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.drift_actor import DriftActor
from deployments.snapshot_store import (
    REDIS_PASSWORD_ENV,
    FileSnapshotStore,
    RedisError,
    RedisSnapshotStore,
    open_snapshot_store,
)
from driftsched.core.drift import DriftTracker

PASSWORD = "test-redis-password"
DRIFT = {"half_life_s": 600.0, "shift_window": 32}


# ---------------------------------------------------------------- locations


def test_a_location_names_a_file_or_a_redis_key():
    assert open_snapshot_store("/tmp/x/drift.json") == FileSnapshotStore(Path("/tmp/x/drift.json"))
    assert open_snapshot_store("relative/drift.json") == FileSnapshotStore(Path("relative/drift.json"))
    env = {REDIS_PASSWORD_ENV: "s3cret"}
    assert open_snapshot_store("redis://driftsched-redis/driftsched:drift", env) == RedisSnapshotStore(
        "driftsched-redis", 6379, "driftsched:drift", "s3cret")
    assert open_snapshot_store("redis://10.0.0.7:7000/a/b", {}) == RedisSnapshotStore("10.0.0.7", 7000, "a/b")
    assert open_snapshot_store("redis://h/k", {REDIS_PASSWORD_ENV: ""}).password is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("", "empty"),
        ("redis://driftsched-redis:6379", r"redis://host\[:port\]/key"),
        ("redis://driftsched-redis:6379/", r"redis://host\[:port\]/key"),
        ("redis://:pw@driftsched-redis/k", "must not carry credentials"),
        ("redis://h:port/k", "invalid port"),
        ("rediss://h/k", "only file paths and redis:// URLs"),
        ("s3://bucket/drift.json", "only file paths and redis:// URLs"),
    ],
)
def test_a_malformed_location_says_how_to_write_it(location: str, message: str):
    with pytest.raises(ValueError, match=message):
        open_snapshot_store(location, {})


def test_the_app_config_checks_the_location_when_it_is_loaded():
    from serve_app.config import GatewayConfig

    GatewayConfig(drift_snapshot_path="redis://driftsched-redis:6379/driftsched:drift")
    with pytest.raises(ValueError, match="must not carry credentials"):
        GatewayConfig(drift_snapshot_path="redis://:hunter2@driftsched-redis/k")


# ---------------------------------------------------------------- a real Redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server on 127.0.0.1 that requires PASSWORD; its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the redis-server binary is absent (.ci/run installs it)")
        pytest.skip("the redis-server binary is absent (apt-get install redis-server); CI fails instead")
    port, work = _free_port(), tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not listen within 10 s"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_redis_store_round_trips_a_large_snapshot_and_reads_none_for_a_new_key(redis_port: int):
    store = RedisSnapshotStore("127.0.0.1", redis_port, "test:round-trip", PASSWORD)
    text = json.dumps({"nodes": [["é", i, "x" * 50] for i in range(20_000)]})  # ~1.5 MB, non-ASCII

    async def scenario() -> tuple[str | None, str | None, str | None]:
        missing = await RedisSnapshotStore("127.0.0.1", redis_port, "test:absent", PASSWORD).load()
        await store.save("old")
        await store.save(text)  # replaces the value whole
        return missing, await store.load(), await store.load()

    missing, first, again = asyncio.run(scenario())
    assert missing is None
    assert first == again == text


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_redis_store_without_the_right_password_raises_an_oserror(redis_port: int, password: str | None):
    store = RedisSnapshotStore("127.0.0.1", redis_port, "test:auth", password)
    with pytest.raises(RedisError, match=r"NOAUTH|WRONGPASS|invalid"):
        asyncio.run(store.save("x"))
    assert issubclass(RedisError, OSError)  # what the drift actor retries on and logs


def test_the_drift_actor_persists_to_redis_and_a_new_instance_restores_from_it(
    redis_port: int, monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)  # where the k8s pods get it from a Secret
    location = f"redis://127.0.0.1:{redis_port}/test:drift-snapshot"
    tracker = DriftTracker()
    for i in range(12):
        tracker.observe("a", "qa", 0, 100.0, 100.0, 180.0 + i, 1_000_000.0 + i)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], bool]:
        first = DriftActor(DRIFT, location, persist_every_s=0.02)
        assert await first.merge("scheduler:e1", 1, tracker.snapshot())
        saved = (await first.snapshot()).state
        store = open_snapshot_store(location)
        deadline = time.monotonic() + 5
        while await store.load() is None:
            assert time.monotonic() < deadline, "the snapshot never reached Redis"
            await asyncio.sleep(0.02)
        restarted = DriftActor(DRIFT, location)
        restored = (await restarted.snapshot()).state
        return saved, restored, await restarted.seed(DriftTracker().snapshot())

    saved, restored, seeded = asyncio.run(scenario())
    assert restored == saved and restored["applied"] == {"scheduler:e1": 1}
    assert DriftTracker.restore(restored).totals().count == 12
    assert not seeded  # the store wins over an ingress copy
