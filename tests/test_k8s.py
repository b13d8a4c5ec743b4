"""The KubeRay manifests (k8s/) and the image recipe (Dockerfile), checked offline.

* Every manifest parses; the generated ones are what `python -m k8s.render` writes from config.l4.yaml.
* Each overlay renders (k8s/kustomize.py, a stand-in for `kustomize build`); its RayService validates
  against KubeRay's RayService CRD (v1.7.0, read from ../shared/k8s-schemas; those tests skip only
  when that folder is absent), its serveConfigV2 against Ray Serve's own schema, and its app args
  against DriftSched's AppConfig.
* The prod serveConfigV2 is config.l4.yaml plus LLMReplica's autoscaling_config and nothing else.
* The Dockerfile's pins match pyproject.toml.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from deployments.snapshot_store import REDIS_PASSWORD_ENV, RedisSnapshotStore, open_snapshot_store
from k8s import kustomize, render

ROOT = Path(__file__).resolve().parents[1]

K8S = ROOT / "k8s"
CRD = ROOT.parent / "shared" / "k8s-schemas" / "ray.io_rayservices.v1.7.0.yaml"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _rayservice(overlay: Path) -> dict[str, Any]:
    (service,) = [r for r in kustomize.build(overlay) if r["kind"] == "RayService"]
    return service


def _serve_config(overlay: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_rayservice(overlay)["spec"]["serveConfigV2"])
    return config


def _group(service: dict[str, Any], name: str) -> dict[str, Any]:
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (group,) = [g for g in groups if g["groupName"] == name]
    return group


# ---------------------------------------------------------------- files


def test_every_manifest_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        with path.open() as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        assert docs, f"{path} holds no document"


def test_generated_files_are_up_to_date() -> None:
    for path, text in render.render().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make k8s`"
    assert render.main(["--check"]) == 0


def test_overlays_exist_and_every_referenced_file_is_there() -> None:
    assert {p.name for p in OVERLAYS} >= {"dev", "prod"}
    for overlay in OVERLAYS:
        kinds = {r["kind"] for r in kustomize.build(overlay)}
        assert {"RayService", "Deployment", "Service"} <= kinds


def test_mini_kustomize_refuses_what_it_does_not_model(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas: [{name: x, count: 2}]\n")
    with pytest.raises(ValueError, match="replicas"):
        kustomize.build(tmp_path)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_mini_kustomize_agrees_with_kubectl_kustomize(overlay: Path) -> None:
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is absent; k8s/kustomize.py alone renders the overlays")
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    real = [doc for doc in yaml.safe_load_all(out.stdout) if doc is not None]

    def key(resource: dict[str, Any]) -> tuple[str, str]:
        return resource["kind"], resource["metadata"]["name"]

    assert sorted(kustomize.build(overlay), key=key) == sorted(real, key=key)


# ---------------------------------------------------------------- schemas


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    if not CRD.parent.is_dir():
        pytest.skip("../shared/k8s-schemas is absent")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1 MB: libyaml when present
    with CRD.open() as f:
        crd = yaml.load(f, Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_rayservice_validates_against_the_kuberay_crd(overlay: Path, crd_schema: dict[str, Any]) -> None:
    import jsonschema

    service = _rayservice(overlay)
    jsonschema.Draft7Validator(crd_schema).validate(service)
    # The validator would accept unknown fields where the CRD is not closed; make typos visible too.
    bad = copy.deepcopy(service)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(crd_schema).validate(bad)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_serve_config_validates_against_ray_serve_schema(overlay: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = _serve_config(overlay)
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    (llm,) = [d for d in app.deployments if d.name == render.LLM_DEPLOYMENT]
    # The app's queue-aware policy scales LLMReplica; a Serve-config autoscaling_config would replace it.
    assert render.queue_aware(render.app_args(config))
    assert "autoscaling_config" not in llm.model_dump(exclude_unset=True)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_the_app_scales_llm_replicas_with_the_queue_aware_policy(overlay: Path) -> None:
    from serve_app.app import build_app

    config = _serve_config(overlay)
    ingress = build_app(render.app_args(config))
    llm = ingress._bound_deployment.init_args[2]._bound_deployment
    scaling = llm._deployment_config.autoscaling_config
    assert scaling.policy.policy_function == "deployments.autoscaling:QueueAwarePolicy"
    assert scaling.max_replicas == render.pool_max(config)
    assert scaling.upscale_delay_s == scaling.downscale_delay_s == 0, "the policy applies the delays"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_app_args_parse_with_the_app_config(overlay: Path) -> None:
    from deployments.replica import LLMReplica
    from serve_app.config import parse_app_config

    config = _serve_config(overlay)
    app_config = parse_app_config(render.app_args(config))
    assert app_config.replicas.engine == "vllm"
    assert app_config.auth.demo_keys == {}, "real deployments take keys from the Secret only"
    assert app_config.auth.demo_metrics_token is None, "the scrape token comes from the Secret only"
    assert LLMReplica.name == render.LLM_DEPLOYMENT


# ---------------------------------------------------------------- config.l4.yaml is the source


def test_prod_serve_config_is_config_l4() -> None:
    source = render.load_serve_config()
    assert _serve_config(K8S / "overlays" / "prod") == source


def test_slot_based_autoscaling_is_added_only_when_queue_aware_scaling_is_off() -> None:
    source = render.load_serve_config()
    render.app_args(source)["replicas"]["autoscaling"]["enabled"] = False
    deployed = render.kubernetes_serve_config(source)
    (llm,) = [d for d in deployed["applications"][0]["deployments"] if d["name"] == render.LLM_DEPLOYMENT]
    autoscaling = llm.pop("autoscaling_config")
    assert deployed == source
    replicas = render.typed_args(render.app_args(source)).replicas  # defaults where the file is silent
    assert autoscaling["max_replicas"] == replicas.num_replicas
    llm["autoscaling_config"] = autoscaling
    assert render.pool_max(deployed) == replicas.num_replicas
    assert autoscaling["min_replicas"] >= 1, "with no replica nothing reaches LLMReplica to scale it up"
    assert autoscaling["target_ongoing_requests"] <= replicas.max_num_seqs


def test_dev_serve_config_differs_from_prod_only_in_size_and_model() -> None:
    prod = _serve_config(K8S / "overlays" / "prod")
    dev = _serve_config(K8S / "overlays" / "dev")
    dev_replicas = dev["applications"][0]["args"].pop("replicas")
    prod_replicas = prod["applications"][0]["args"].pop("replicas")
    assert dev == prod
    keys = prod_replicas.keys() | dev_replicas.keys()  # dev may set what prod leaves at the default
    changed = {k for k in keys if dev_replicas.get(k) != prod_replicas.get(k)}
    assert changed == {"num_replicas", "model", "served_model_name", "autoscaling"}
    assert dev_replicas["autoscaling"]["max_replicas"] == render.DEV_MAX_L4


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_cluster_matches_the_serve_config(overlay: Path) -> None:
    service = _rayservice(overlay)
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    (llm,) = [d for d in app["deployments"] if d["name"] == render.LLM_DEPLOYMENT]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == render.RAY_VERSION

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]

    l4 = _group(service, "l4")
    assert l4["minReplicas"] == 0
    assert l4["maxReplicas"] == render.pool_max(config), "one L4 node per Serve replica"
    assert llm["name"] == render.LLM_DEPLOYMENT
    assert "accelerator_type:L4" in l4["rayStartParams"]["resources"]
    pod = l4["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(llm["ray_actor_options"]["num_gpus"])
    assert float(limits["cpu"]) >= llm["ray_actor_options"]["num_cpus"]
    assert llm["ray_actor_options"]["accelerator_type"] == "L4"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_secrets_reach_every_ray_container(overlay: Path) -> None:
    service = _rayservice(overlay)
    auth = render.typed_args(render.app_args(yaml.safe_load(service["spec"]["serveConfigV2"]))).auth
    keys_env, token_env = auth.keys_env, auth.metrics_token_env
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env[keys_env]["valueFrom"]["secretKeyRef"]["name"] == "driftsched-api-keys"
        token_ref = env[token_env]["valueFrom"]["secretKeyRef"]
        assert (token_ref["name"], token_ref["key"]) == render.METRICS_TOKEN_SECRET
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "driftsched-hf-token"
        assert not pod["spec"]["containers"][0]["image"].endswith(":latest")
    redis = cluster["gcsFaultToleranceOptions"]
    assert redis["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "driftsched-redis"
    resources = kustomize.build(overlay)
    redis_service = [
        r for r in resources if r["kind"] == "Service" and r["metadata"]["name"] == "driftsched-redis"
    ]
    assert redis_service and redis["redisAddress"] == "driftsched-redis:6379"


def test_prod_scrapes_app_and_ray_metrics_and_exposes_tenant_traffic() -> None:
    resources = kustomize.build(K8S / "overlays" / "prod")
    monitors = {r["metadata"]["name"]: r for r in resources if r["kind"] == "PodMonitor"}
    endpoints = {
        (e["port"], e.get("path", "/metrics"))
        for m in monitors.values()
        for e in m["spec"]["podMetricsEndpoints"]
    }
    assert endpoints == {("serve", "/metrics"), ("metrics", "/metrics")}
    # The app's /metrics is on the tenant port and answers only the scrape token, from the same Secret
    # the ingress pods read it from.
    (app_endpoint,) = [e for m in monitors.values() for e in m["spec"]["podMetricsEndpoints"]
                       if e["port"] == "serve"]
    authorization = app_endpoint["authorization"]
    assert authorization["type"] == "Bearer"
    credentials = authorization["credentials"]
    assert (credentials["name"], credentials["key"]) == render.METRICS_TOKEN_SECRET
    service = _rayservice(K8S / "overlays" / "prod")
    head_ports = {
        p["name"]: p["containerPort"]
        for p in service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "ports"
        ]
    }
    http_port = yaml.safe_load(service["spec"]["serveConfigV2"])["http_options"]["port"]
    assert head_ports["serve"] == http_port and head_ports["metrics"] == 8080
    (lb,) = [r for r in resources if r["kind"] == "Service" and r["spec"].get("type") == "LoadBalancer"]
    assert lb["spec"]["ports"][0]["targetPort"] == http_port
    assert _group(service, "cpu")["maxReplicas"] == 3  # the index-based prod patch hit the CPU group


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_drift_snapshot_is_in_the_gcs_redis_every_pod_reaches_no_volume_of_its_own(overlay: Path) -> None:
    resources = kustomize.build(overlay)
    claims = [r["metadata"]["name"] for r in resources if r["kind"] == "PersistentVolumeClaim"]
    assert claims == ["driftsched-redis"]  # Redis's own disk, and nothing for the drift snapshot
    service = _rayservice(overlay)
    cluster = service["spec"]["rayClusterConfig"]
    gcs = cluster["gcsFaultToleranceOptions"]
    location = render.app_args(yaml.safe_load(service["spec"]["serveConfigV2"]))["gateway"][
        "drift_snapshot_path"
    ]
    store = open_snapshot_store(location, {})
    assert isinstance(store, RedisSnapshotStore)
    assert f"{store.host}:{store.port}" == gcs["redisAddress"]  # the GCS fault-tolerance Redis
    services = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Service"}
    redis_service = services[store.host]
    assert store.port in [p["port"] for p in redis_service["spec"]["ports"]]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:  # the drift actor may (re)start on any of them
        assert not [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env[REDIS_PASSWORD_ENV]["valueFrom"] == gcs["redisPassword"]["valueFrom"]


def test_render_refuses_a_node_local_drift_snapshot() -> None:
    config = render.kubernetes_serve_config(render.load_serve_config())
    render.app_args(config)["gateway"]["drift_snapshot_path"] = "/tmp/driftsched/drift_snapshot.json"
    with pytest.raises(ValueError, match="drift_snapshot_path"):
        render.rayservice(config)


# ---------------------------------------------------------------- image


def _dockerfile_args() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def _pin(requirements: list[str], name: str) -> str:
    (req,) = [Requirement(r) for r in requirements if Requirement(r).name == name]
    (spec,) = req.specifier
    assert spec.operator == "==", f"{name} is not pinned in pyproject.toml"
    return spec.version


def test_image_pins_match_pyproject() -> None:
    args = _dockerfile_args()
    project = _pyproject()
    assert args["RAY_VERSION"] == _pin(project["dependencies"], "ray") == render.RAY_VERSION
    python = re.fullmatch(r"py3(\d+)", args["PYTHON_TAG"])
    assert python and f"3.{python.group(1)}" in SpecifierSet(project["requires-python"])
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{CUDA_TAG\}$", text, re.M)
    assert '".[vllm]"' in text


def test_image_vllm_pin_matches_the_vllm_extra() -> None:
    extras = _pyproject().get("optional-dependencies", {})
    if "vllm" not in extras:
        pytest.skip("pyproject.toml has no `vllm` extra yet")
    assert _dockerfile_args()["VLLM_VERSION"] == _pin(extras["vllm"], "vllm")
