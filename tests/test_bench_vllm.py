"""benchmarks/bench_vllm.py: the rounds' requests, the judging of a block, the options, the engine
pinning (each vLLM engine process on a core of its own) and the choice of the engine's model (heavy
enough that the engine, not the front-end, is the bottleneck)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from benchmarks import bench_vllm as bench

CORES = sorted(os.sched_getaffinity(0))


def test_a_round_is_the_same_requests_for_every_setup_and_the_mix_is_seeded():
    trace = [0.1 * i + (2.0 if i > 50 else 0.0) for i in range(400)]  # a gap: a burst after it
    rounds = bench.segments(2.0, 10.0, 3, seed=1, trace=trace)
    assert len(rounds) == 3 and sum(len(r) for r in rounds) == 60  # 2/s for 30 s
    assert all(0 <= it.at_s < 10.0 for r in rounds for it in r)
    assert rounds == bench.segments(2.0, 10.0, 3, seed=1, trace=trace)
    prompts = [it.prompt for r in rounds for it in r]
    assert len(set(prompts)) == len(prompts)  # numbered across rounds
    poisson = bench.segments(2.0, 10.0, 3, seed=1, trace=None)  # no trace: Poisson
    assert 30 < sum(len(r) for r in poisson) < 90
    items = bench.make_load([0.0] * 2000, seed=5)
    shares = {t: sum(it.tenant == t for it in items) / len(items) for t in bench.TENANTS}
    assert shares == pytest.approx({t: spec[2] for t, spec in bench.TENANTS.items()}, abs=0.04)
    mean = sum(it.target for it in items) / len(items)
    assert mean == pytest.approx(bench.mean_output_tokens(), rel=0.05)


def test_the_trace_is_read_where_it_is_and_skipped_where_it_is_not(tmp_path):
    assert bench.trace_times(tmp_path / "absent.csv") is None and bench.trace_times(None) is None
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                    "2023-11-16 18:15:50.9951690,396,109\n")
    assert bench.trace_times(path) == pytest.approx([0.0, 4.3145790])


def test_a_block_is_judged_against_the_tenants_objectives_and_a_failure_misses_both():
    seen = [bench.Seen("interactive", 0.0, 0.5, 1.0, 11),  # TTFT 0.5 s, TPOT 50 ms: meets both
            bench.Seen("interactive", 1.0, 4.0, 5.0, 11),  # TTFT 3 s: over interactive's 1.5 s
            bench.Seen("batch", 2.0, float("nan"), float("nan"), 11, "http_500")]
    block = bench.to_block("vllm-fcfs", 0, 10.0, seen)
    assert block.ttft_met.tolist() == [True, False, False] and block.tpot_met.tolist() == [True, True, False]
    assert block.ttft_s.tolist() == [0.5, 3.0, float("inf")]
    sat = bench.throughput("vllm-fcfs", 0, 12.0, [bench.Seen("free", 0.0, 1.0, 3.0, 100),
                                                  bench.Seen("free", 0.0, 10.0, 14.0, 100)])
    assert sat.window_s == 12.0 - bench.SAT_WARMUP_S
    assert sat.tokens == pytest.approx(50 + 50)  # half of each streamed inside [2, 12]


def test_options_keep_the_reference_and_default_to_the_targets_setups():
    args = bench.parse_args([])
    assert args.setups == list(bench.DEFAULT_SETUPS) and args.low_setups == ["driftsched-fifo", "vllm-fcfs"]
    assert args.concurrency == 2 * args.slots and args.block_s == 30.0 and args.load == 0.75
    assert bench.parse_args(["--setups", "driftsched-sjf,vllm-fcfs"]).low_setups == ["vllm-fcfs"]
    assert bench.parse_args(["--trace", "none"]).trace is None
    for argv in (["--setups", "driftsched-fifo,vllm-priority"], ["--setups", "vllm-fcfs,nope"],
                 ["--sat-block-s", "1"], ["--rounds", "0"], ["--model", "512"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


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
