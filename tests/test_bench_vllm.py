"""benchmarks/bench_vllm.py: the engine pinning (each vLLM engine process on a core of its own)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    import bench_vllm as bench
finally:
    sys.path.pop(0)

CORES = sorted(os.sched_getaffinity(0))


def _pin_in_child(engines: int, queue: multiprocessing.Queue) -> None:
    pinning = bench.EnginePinning(engines)
    queue.put((pinning.engine_cores, sorted(os.sched_getaffinity(0)), pinning.reason))


@pytest.mark.skipif(len(CORES) < 2, reason="pinning needs a core besides the engine's")
def test_the_driver_leaves_the_engine_cores_to_the_engines():
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_pin_in_child, args=(1, queue))
    child.start()  # in a child: the pinning narrows the CPU set of the process that makes it
    engine_cores, driver_cores, reason = queue.get(timeout=60)
    child.join(timeout=60)
    assert engine_cores == CORES[-1:] and driver_cores == CORES[:-1]
    assert str(CORES[-1]) in reason


def test_no_pinning_when_off_or_when_the_engines_would_take_every_core():
    for pinning in (bench.EnginePinning(1, enabled=False), bench.EnginePinning(len(CORES))):
        assert pinning.engine_cores == [] and pinning.reason.startswith("off")
        pinning.pin()  # nothing to do, and no wait for engines
    assert sorted(os.sched_getaffinity(0)) == CORES


def test_engines_are_found_only_under_this_driver():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert bench._descends_from(child.pid, os.getpid())
        assert not bench._descends_from(os.getpid(), child.pid)
    finally:
        child.kill()
        child.wait()
    assert bench._engine_processes() == []  # no vLLM engine runs under the test process
