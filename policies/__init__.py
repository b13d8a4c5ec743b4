"""Scheduling policies, chosen by name from `POLICIES` or as "module:Class" for out-of-tree ones.

Every registered class subclasses the core's `Policy` protocol (`RankedPolicy` where it can rank
running tickets), so mypy checks each one against it; an out-of-tree class is checked at run time.
"""

from __future__ import annotations

import importlib
import inspect
import math
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from driftsched.core.errors import PolicyOptionsError, UnknownPolicyError
from policies.aging import AgingPolicy
from policies.base import HeapPolicy, Policy, PolicyContext, RankedPolicy
from policies.bounded import BoundedSjfPolicy
from policies.dynamo import DynamoEdfPolicy, DynamoWsptPolicy
from policies.fifo import FifoPolicy
from policies.llmd_flow import LlmdFlowPolicy
from policies.priority import PriorityPolicy
from policies.relative import RelativeSjfPolicy
from policies.sjf import SjfPolicy
from policies.slo import SloPolicy
from policies.vllm_priority import VllmPriorityPolicy
from policies.weighted import WeightedFairPolicy

POLICIES: dict[str, type[Policy]] = {
    "fifo": FifoPolicy,
    "priority": PriorityPolicy,
    "weighted": WeightedFairPolicy,
    "sjf": SjfPolicy,
    "aging": AgingPolicy,
    "bounded": BoundedSjfPolicy,
    "relative": RelativeSjfPolicy,
    "slo": SloPolicy,
    # What users would pick instead (each docstring names its source), run side by side with ours.
    "vllm-priority": VllmPriorityPolicy,
    "llmd-flow": LlmdFlowPolicy,
    "dynamo-wspt": DynamoWsptPolicy,
    "dynamo-edf": DynamoEdfPolicy,
}
PEERS = ("vllm-priority", "llmd-flow", "dynamo-wspt", "dynamo-edf")
"""The registered policies that emulate another scheduler (the rest are ours)."""


def policy_class(name: str) -> type[Policy]:
    """The policy class registered as `name`, or imported from "package.module:ClassName"."""
    cls: type[Policy] | None = POLICIES.get(name)
    if cls is None and ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise UnknownPolicyError(f"cannot import policy {name!r}: {exc}") from None
    if cls is None:
        raise UnknownPolicyError(
            f"unknown policy {name!r}; choose one of {sorted(POLICIES)} or give 'module:Class'"
        )
    return cls


def check_options(cls: type[Policy], options: Mapping[str, Any]) -> None:
    """Check `options` against the annotated parameters of ``cls.__init__``, before calling it.

    Strict: no coercion ("10" is not a number, true is not 10), no infinities or NaN, no names the
    constructor does not take. Ranges stay in the constructors, which state the fix.
    """
    fields: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except NameError:  # an out-of-tree annotation that does not resolve here: check the names only
        hints = {}
    for param in inspect.signature(cls).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            return  # takes anything: the constructor is the only judge
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)
    model = create_model(f"{cls.__name__}Options", __config__=config, **fields)
    try:
        model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        valid = ", ".join(fields) or "none"
        raise PolicyOptionsError(
            f"bad options for policy {cls.__name__}: {problems} (its options: {valid})"
        ) from None


def resolve_options(name: str, options: Mapping[str, Any], context: PolicyContext) -> dict[str, Any]:
    """The options policy `name` runs with in a service described by `context`: `options`, over what
    the class derives from the service (its ``derived_options(context)`` classmethod, if it has one).

    What a config gives wins; a per-tenant mapping it gives wins tenant by tenant, so naming one tenant
    does not drop what the others derive.
    """
    derive = getattr(policy_class(name), "derived_options", None)
    resolved: dict[str, Any] = dict(derive(context)) if derive is not None else {}
    for option, value in options.items():
        derived = resolved.get(option)
        if isinstance(derived, Mapping) and isinstance(value, Mapping):
            resolved[option] = {**derived, **value}
        else:
            resolved[option] = value
    return resolved


def options_on_clock(name: str, options: Mapping[str, Any], time_scale: float) -> dict[str, Any]:
    """`options` of policy `name` for a service running `time_scale` real seconds per modelled second.

    Every option the class lists in `time_options` is converted by its power of seconds, its
    constructor default first where `options` leaves it out (so the policy keeps its modelled
    behaviour; an infinite default, no limit, stays unset); a per-tenant mapping is converted entry
    by entry. Other options pass unchanged.
    """
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    cls = policy_class(name)
    defaults = inspect.signature(cls).parameters
    scaled = dict(options)
    for option, power in getattr(cls, "time_options", {}).items():
        value = scaled.get(option, defaults[option].default)
        factor = time_scale**power
        if isinstance(value, Mapping):
            scaled[option] = {key: seconds * factor for key, seconds in value.items()}
        elif isinstance(value, int | float) and math.isfinite(value):  # inf (no limit) stays unset
            scaled[option] = value * factor
    return scaled


def make_policy(name: str, **options: Any) -> Policy:
    """Build a policy by registry name or "package.module:ClassName"."""
    cls = policy_class(name)
    check_options(cls, options)
    try:
        policy = cls(**options)
    except TypeError as exc:
        raise PolicyOptionsError(f"bad options {options!r} for policy {name!r}: {exc}") from None
    if not isinstance(policy, Policy):  # an out-of-tree class that does not subclass the protocol
        raise UnknownPolicyError(f"{name!r} does not implement the Policy interface")
    return policy


__all__ = [
    "PEERS",
    "POLICIES",
    "AgingPolicy",
    "BoundedSjfPolicy",
    "DynamoEdfPolicy",
    "DynamoWsptPolicy",
    "FifoPolicy",
    "HeapPolicy",
    "LlmdFlowPolicy",
    "Policy",
    "PolicyContext",
    "PriorityPolicy",
    "RankedPolicy",
    "RelativeSjfPolicy",
    "SjfPolicy",
    "SloPolicy",
    "VllmPriorityPolicy",
    "WeightedFairPolicy",
    "check_options",
    "make_policy",
    "options_on_clock",
    "policy_class",
    "resolve_options",
]
