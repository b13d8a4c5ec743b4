"""docs/configuration.md: every key of the application's args, generated from the pydantic models.

The root is `serve_app.config.AppConfig` (the ``args:`` of the DriftSched application in a Serve config),
which nests the core (`driftsched.core.config`) and the replicas (`deployments.replica_config`). Each
model becomes a section named by its path (``core.scheduler.preemption``; ``core.tenants[]`` for the
entries of a list), with one table row per field: key, type with its bounds, default, and the field's
doc. The docs are the fields' attribute docstrings (the models set ``use_attribute_docstrings``), so
the reference and the code cannot disagree; a field without one is reported (`undocumented`).
"""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from driftsched.results import PROJECT_ROOT, markdown_table

SERVE_CONFIG_DOCS = "https://docs.ray.io/en/latest/serve/production-guide/config.html"


@dataclass(frozen=True, slots=True)
class Section:
    path: str
    model: type[BaseModel]

    @property
    def anchor(self) -> str:
        """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
        text = self.path.lower()
        return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def _models_in(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """The models an annotation holds, each with whether it sits in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    origin = get_origin(annotation)
    found = [m for arg in get_args(annotation) for m in _models_in(arg)]
    return [(m, True) for m, _ in found] if origin is list else found


def sections(root: type[BaseModel]) -> list[Section]:
    """`root` and every model under it, depth first in field order."""
    out = [Section("args", root)]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            for sub, in_list in _models_in(field.annotation):
                path = f"{prefix}{name}" + ("[]" if in_list else "")
                out.append(Section(path, sub))
                walk(sub, path + ".")

    walk(root, "")
    return out


def _type_text(annotation: Any, links: dict[type[BaseModel], Section]) -> str:
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{links[annotation].path}](#{links[annotation].anchor})"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(a, links) for a in args)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin is list and len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return f"list of {_type_text(args[0], links)}"
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_text(a, links) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> list[str]:
    out = []
    for item in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if isinstance(item, getattr(at, attr.capitalize())):
                out.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, at.MinLen):
            out.append(f"length ≥ {item.min_length}")
        if isinstance(item, at.MaxLen):
            out.append(f"length ≤ {item.max_length}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"matches `{pattern}`")
    return out


def _default(field: FieldInfo, links: dict[type[BaseModel], Section]) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        section = links[type(value)]
        return f"see [{section.path}](#{section.anchor})"
    if isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
        value = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in value.items()}
    return f"`{json.dumps(value)}`"


def _doc(field: FieldInfo) -> str:
    if field.description:
        return " ".join(field.description.split())
    models = _models_in(field.annotation)
    if models and models[0][0].__doc__:
        return " ".join(inspect.cleandoc(models[0][0].__doc__).split("\n\n")[0].split())
    return ""


def undocumented_keys(root: type[BaseModel] | None = None) -> list[str]:
    """Keys (paths) with no doc of their own or of their model: the reference would leave them blank."""
    root = root or _app_config()
    return [
        f"{s.path}.{name}".removeprefix("args.")
        for s in sections(root)
        for name, field in s.model.model_fields.items()
        if not _doc(field)
    ]


def _app_config() -> type[BaseModel]:
    from serve_app.config import AppConfig  # the app's package; imported only when documenting it

    return AppConfig


def _source(model: type[BaseModel]) -> str:
    path = Path(inspect.getfile(model)).resolve().relative_to(PROJECT_ROOT)
    return f"[`{path}`](../{path})"


def render(root: type[BaseModel] | None = None) -> str:
    """The text of docs/configuration.md."""
    root = root or _app_config()
    all_sections = sections(root)
    links = {s.model: s for s in all_sections}
    sources = ", ".join(dict.fromkeys(_source(s.model) for s in all_sections))
    parts = [
        "# Configuration reference",
        "<!-- Generated by `driftsched docs` from the pydantic models' field docstrings: edit those, "
        "then run `driftsched docs`. -->",
        "The DriftSched application's settings: the keys under `args:` of its entry in a Serve config "
        "(`import_path: serve_app.app:build_app`), as in [config.yaml](../config.yaml), "
        "[config.cpu.yaml](../config.cpu.yaml) and [config.l4.yaml](../config.l4.yaml). The rest of "
        f"those files is [Ray Serve's config]({SERVE_CONFIG_DOCS}). A key left out takes its default; "
        "`driftsched simulate --config` and `driftsched bench live --config` read the same files. "
        f"Generated from {sources}.",
    ]
    for section in all_sections:
        model = section.model
        rows = []
        for name, field in model.model_fields.items():
            kind = ", ".join([_type_text(field.annotation, links), *_bounds(field)])
            rows.append([f"`{name}`", kind, _default(field, links), _doc(field)])
        intro = " ".join(inspect.cleandoc(model.__doc__ or "").split())
        parts += [f"## {section.path}", intro, markdown_table(["key", "type", "default", "description"], rows,
                                                               align="llll")]
    return "\n\n".join(p for p in parts if p) + "\n"
