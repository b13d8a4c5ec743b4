"""The shipped Serve configs validate, vLLM settings are checked, and nothing imports vLLM eagerly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments.replica_config import PROJECT_ROOT, ReplicaConfig
from serve_app.config import parse_app_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["config.yaml", "config.l4.yaml", "config.cpu.yaml"])
def test_shipped_configs_validate(name):
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((ROOT / name).read_text())
    validate = getattr(ServeDeploySchema, "model_validate", None) or ServeDeploySchema.parse_obj
    validate(data)
    (app,) = data["applications"]
    config = parse_app_config(app["args"])
    assert config.replicas.engine == ("sim" if name == "config.yaml" else "vllm")


def test_l4_config_pins_one_l4_per_replica():
    data = yaml.safe_load((ROOT / "config.l4.yaml").read_text())
    (app,) = data["applications"]
    (llm,) = [d for d in app["deployments"] if d["name"] == "LLMReplica"]
    assert llm["ray_actor_options"]["num_gpus"] == 1
    assert llm["ray_actor_options"]["accelerator_type"] == "L4"
    args = app["args"]
    assert args["core"]["scheduler"]["max_request_tokens"] <= args["replicas"]["engine_args"]["max_model_len"]


def test_relative_model_path_resolves_against_project_root():
    config = ReplicaConfig(engine="vllm", model="./.cache/tiny", served_model_name="t").resolved()
    assert config.model == str(PROJECT_ROOT / ".cache" / "tiny")
    hub = ReplicaConfig(engine="vllm", model="org/model", served_model_name="t").resolved()
    assert hub.model == "org/model"


@pytest.mark.parametrize("bad, message", [
    ({"engine": "sim", "model": "org/model"}, "simulated engine"),
    ({"engine": "sim", "engine_args": {"dtype": "float32"}}, "engine: vllm"),
    ({"engine": "vllm", "model": "m", "engine_args": {"max_num_seqs": 4}}, "max_num_seqs"),
])
def test_replica_config_errors_name_the_fix(bad, message):
    with pytest.raises(ValueError, match=message):
        ReplicaConfig.model_validate(bad)


def test_app_imports_without_vllm():
    code = ("import sys, serve_app.app, serve_app.prompts, deployments.vllm_engine, driftsched.cli; "
            "bad = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("scheduler", "needle"),
    [({"policy": "sjff"}, "unknown policy 'sjff'"),
     ({"policy": "aging", "policy_options": {"age_step_s": -1}}, "age_step_s must be > 0"),
     ({"policy": "fifo", "policy_options": {"bogus": 1}}, "bad options")],
)
def test_a_bad_policy_fails_the_build_naming_the_field(scheduler, needle):
    from conftest import app_args

    from driftsched.core.errors import ConfigError
    from serve_app.app import build_app

    with pytest.raises(ConfigError, match=r"core\.scheduler\.policy") as info:
        build_app(app_args(**{f"core.scheduler.{k}": v for k, v in scheduler.items()}))
    assert needle in str(info.value)


@pytest.mark.parametrize("queue_slots", [0, 3])
def test_engine_queue_slots_add_to_what_a_replica_takes(queue_slots):
    from deployments.replica_config import build_engine
    from deployments.vllm_engine import VllmEngine

    config = ReplicaConfig(max_num_seqs=4, engine_queue_slots=queue_slots)
    capacity = build_engine(config).capacity()  # the simulated engine, idle
    assert (capacity.max_slots, capacity.free_slots) == (4 + queue_slots, 4 + queue_slots)
    vllm = VllmEngine("m", "m", 4, 64, {}, queue_slots=queue_slots)
    vllm._engine = type("Alive", (), {"errored": False})()  # capacity() reads only its state
    vllm._active = {"a": 3, "b": 0}
    vllm._state.running, vllm._state.waiting = 1, queue_slots + 1  # more waiting than its queue
    assert vllm.capacity().free_slots == 0 and vllm.capacity().max_slots == 4 + queue_slots
    vllm._state.waiting = queue_slots
    assert vllm.capacity().free_slots == 4 + queue_slots - 2


def test_an_idle_engine_reports_nothing_running_whatever_its_last_step_said():
    from deployments.vllm_engine import VllmEngine

    vllm = VllmEngine("m", "m", 4, 64, {})
    vllm._engine = type("Alive", (), {"errored": False})()
    vllm._state.running, vllm._state.waiting = 1, 1  # the last step's stats, before an abort
    vllm._active = {"a": 5}
    assert (vllm.capacity().engine_running, vllm.capacity().engine_waiting) == (1, 1)
    vllm._active = {}  # vLLM sends no further stats once it has nothing to step
    assert (vllm.capacity().engine_running, vllm.capacity().engine_waiting) == (0, 0)
    assert vllm.capacity().free_slots == 4
