"""A tiny offline stand-in for `kustomize build`, for the tests (kustomize itself is not needed).

It understands exactly the subset of kustomization.yaml that k8s/ uses and refuses anything else, so a
kustomization that grows a feature this module does not model fails the tests instead of being
silently misread:

* `resources:` files (multi-document YAML) or directories holding a kustomization.yaml;
* `patches:` with `path:` to a JSON 6902 patch (a list of add / replace / remove operations) and a
  `target:` naming kind and name (group and version optional);
* `images:` with `name:` and `newName:` / `newTag:`;
* `configMapGenerator:` with `name:`, `files:` (the key is the file's name) and `options:` holding
  `labels:` / `annotations:` and `disableNameSuffixHash: true` (kustomize's name hash is not modelled);
* `namespace:`, set on every resource.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "namespace", "configMapGenerator"}
GENERATOR_KEYS = {"name", "files", "options"}
GENERATOR_OPTIONS = {"labels", "annotations", "disableNameSuffixHash"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def build(directory: Path) -> list[dict[str, Any]]:
    """The resources a kustomization directory renders to."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise ValueError(
            f"{directory}/kustomization.yaml uses {sorted(unknown)}, which k8s/kustomize.py "
            "does not model; extend it or use the supported keys"
        )
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += build(path) if path.is_dir() else load_documents(path)
    resources += [_config_map(directory, entry) for entry in kustomization.get("configMapGenerator", [])]
    for patch in kustomization.get("patches", []):
        operations = load_documents(directory / patch["path"])[0]
        targets = [r for r in resources if _matches(r, patch["target"])]
        if not targets:
            raise ValueError(f"patch {patch['path']} in {directory} matches no resource")
        for resource in targets:
            _apply_json6902(resource, operations)
    for image in kustomization.get("images", []):
        for container in _containers(resources):
            if container.get("image", "").split(":")[0] == image["name"]:
                name = image.get("newName", image["name"])
                container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name
    if "namespace" in kustomization:
        for resource in resources:
            resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    return resources


def _config_map(directory: Path, generator: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap one configMapGenerator entry makes, refusing what this module does not model."""
    options = generator.get("options", {})
    unknown = (set(generator) - GENERATOR_KEYS) | (set(options) - GENERATOR_OPTIONS)
    if unknown or options.get("disableNameSuffixHash") is not True:
        raise ValueError(
            f"configMapGenerator {generator.get('name')!r} in {directory} uses {sorted(unknown)} or a "
            "hashed name, which k8s/kustomize.py does not model; use files: and options: labels, "
            "annotations, disableNameSuffixHash: true"
        )
    metadata: dict[str, Any] = {"name": generator["name"]}
    for key in ("labels", "annotations"):
        if key in options:
            metadata[key] = dict(options[key])
    data = {}
    for entry in generator["files"]:
        key, _, path = entry.rpartition("=")
        data[key or Path(path).name] = (directory / path).read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _matches(resource: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = resource.get("apiVersion", "").rpartition("/")
    return (
        resource.get("kind") == target["kind"]
        and resource.get("metadata", {}).get("name") == target.get("name", resource["metadata"]["name"])
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def _containers(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container of every pod template, at any depth (Deployments, RayService groups)."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(c for c in value if isinstance(c, dict))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(resources)
    return found


def _apply_json6902(document: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    for op in operations:
        *parents, leaf = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "remove":
            del node[int(leaf) if isinstance(node, list) else leaf]
        elif op["op"] in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(node, list):
                index = len(node) if leaf == "-" else int(leaf)
                if op["op"] == "add":
                    node.insert(index, value)
                else:
                    node[index] = value
            else:
                if op["op"] == "replace" and leaf not in node:
                    raise KeyError(f"replace of missing path {op['path']}")
                node[leaf] = value
        else:
            raise ValueError(f"JSON patch op {op['op']!r} is not modelled; use add, replace or remove")
