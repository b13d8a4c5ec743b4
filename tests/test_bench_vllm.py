"""benchmarks/bench_vllm.py: the engine pinning (each vLLM engine process on a core of its own), the
choice of the engine's model (heavy enough that the engine, not the front-end, is the bottleneck), and
the order and pooling of the set-ups' replays."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from benchmarks import bench_vllm as bench

CORES = sorted(os.sched_getaffinity(0))


def test_seeds_interleave_the_setups_so_each_runs_in_every_position_equally():
    setups = ["a", "b", "c"]
    orders = [bench.interleaved(setups, i) for i in range(6)]
    assert all(sorted(order) == setups for order in orders)
    for position in range(3):
        column = [order[position] for order in orders]
        assert sorted(column) == ["a", "a", "b", "b", "c", "c"]
    assert orders[0] == setups and orders[1] == ["b", "c", "a"]


def _replay(e2e_s: list[float]) -> list:
    """One seed of "free" requests, one a second, each its first token 0.1 s after it is sent."""
    return [bench.Seen("free", float(i), i + 0.1, i + e, 10) for i, e in enumerate(e2e_s)]


def test_pooled_figures_rest_on_every_seeds_window_and_differ_from_the_median_of_seeds():
    # 12 requests per seed: the steady window keeps the eight sent at 2..9 s (1.1 to 9.9 s of 0..11 s)
    seed_1 = _replay([1.0] * 2 + [1.0] * 9 + [50.0])  # the slow one is sent last: outside the window
    seed_1[6] = bench.Seen("free", 6.0, 6.1, 56.0, 10)  # one slow request inside it
    seed_2 = _replay([2.0] * 12)
    seed_3 = _replay([3.0] * 12)
    records = [bench.to_records("vllm-fcfs", s, 100.0) for s in (seed_1, seed_2, seed_3)]
    runs = {"vllm-fcfs": {k: bench.figures(r) for k, r in enumerate(records, 1)}}
    median = bench.combine(runs)["policies"]["vllm-fcfs"]
    pooled = bench.pooled_figures({"vllm-fcfs": records})["vllm-fcfs"]
    assert median["window"]["requests"] == 8 and pooled["window"]["requests"] == 24
    assert median["per_tenant"]["free"]["e2e_s"]["p99"] == pytest.approx(3.0)
    assert pooled["per_tenant"]["free"]["e2e_s"]["p99"] > 30  # the worst of 24 still weighs on it
    assert pooled["per_tenant"]["free"]["e2e_s"]["p50"] == pytest.approx(2.0)
    assert "goodput" not in pooled  # rates do not pool across the seeds' clocks
    assert "batch" not in pooled["per_tenant"]  # no batch requests


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


# -- the engine's model: heavy enough that the engine, not the front-end, is the bottleneck ---------


def test_the_ladder_stops_at_the_first_model_whose_step_reaches_the_target(monkeypatch, tmp_path):
    built, probed = [], []
    steps = {128: 1.1, 256: 2.2, 512: 4.0, 768: 9.7, 1024: 20.0}  # by hidden size; 512x6 at 6.0

    def build(out_dir, hidden_size, num_layers):
        built.append((hidden_size, num_layers))
        return out_dir

    def probe(model_dir, slots, work, core):
        hidden, layers = built[-1]
        probed.append((model_dir.name, slots, core))
        return 6.0 if (hidden, layers) == (512, 6) else steps[hidden]

    monkeypatch.setattr("driftsched.tiny_model.build_tiny_model", build)
    monkeypatch.setattr(bench, "probe_step_ms", probe)
    model_dir, size, step = bench.choose_model("auto", 5.0, 4, tmp_path, core=1)
    assert size == (512, 6) and step == 6.0 and model_dir == tmp_path / "tiny-llama-512x6"
    assert built == list(bench.MODEL_LADDER[:4]) and {(s, c) for _, s, c in probed} == {(4, 1)}

    built.clear()
    _, size, step = bench.choose_model("auto", 50.0, 4, tmp_path, core=None)  # nothing is that slow
    assert size == bench.MODEL_LADDER[-1] and step == 20.0 and built == list(bench.MODEL_LADDER)


def test_a_named_model_is_built_as_named_without_a_probe(monkeypatch, tmp_path):
    def no_probe(*args):
        raise AssertionError("a named model is not probed")

    monkeypatch.setattr(bench, "probe_step_ms", no_probe)
    model_dir, size, step = bench.choose_model("192x3", 5.0, 4, tmp_path, core=None)
    assert size == (192, 3) and step is None
    config = (model_dir / "config.json").read_text()
    for field in ('"hidden_size": 192', '"num_hidden_layers": 3', '"num_attention_heads": 6',
                  '"num_key_value_heads": 3', '"head_dim": 32'):
        assert field in config


@pytest.mark.parametrize("spec", ["512", "512x", "x6", "big", "512x6x2", "-64x2"])
def test_a_model_spec_is_hidden_x_layers(spec):
    with pytest.raises(ValueError, match="HIDDENxLAYERS"):
        bench.parse_model(spec)


@pytest.mark.parametrize("spec", ["100x2", "512x0"])
def test_a_model_spec_vllm_cannot_run_is_refused_before_anything_is_built(spec):
    with pytest.raises(ValueError, match="multiple of 64"):
        bench.parse_model(spec)


@pytest.mark.parametrize(("hidden", "layers"), [(100, 2), (32, 2), (128, 0)])
def test_the_tiny_model_refuses_shapes_vllm_cannot_run(tmp_path, hidden, layers):
    from driftsched.tiny_model import build_tiny_model

    with pytest.raises(ValueError, match="multiple of 64"):
        build_tiny_model(tmp_path, hidden_size=hidden, num_layers=layers)


@pytest.mark.slow
def test_the_step_probe_times_real_vllm(tiny_model_dir, tmp_path):  # the fixture skips without vLLM
    step_ms = bench.probe_step_ms(tiny_model_dir, 2, tmp_path, CORES[-1])
    assert 0.1 < step_ms < 1000  # the default tiny model steps in about 1-6 ms on 2 cores
